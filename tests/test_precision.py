from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import compose_config
from encdec import precision

SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
ZEN3 = "processor\t: 0\nflags\t\t: fpu sse avx avx2 fma\n"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(SAPPHIRE_RAPIDS)
    assert {"amx_bf16", "avx512_bf16", "avx2"} <= precision.cpu_flags(cpuinfo)
    assert precision.cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [(SAPPHIRE_RAPIDS, "bf16-mixed"), (ZEN3, "32-true")],
)
def test_auto_on_cpu_takes_bf16_only_with_amx(tmp_path, monkeypatch, cpuinfo, expected):
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    flags = precision.cpu_flags(tmp_path / "cpuinfo")
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    for accelerator in ("cpu", "auto"):
        chosen, why = precision.resolve("auto", accelerator)
        assert chosen == expected
        assert ("AMX" in why) and (("no AMX" in why) == (expected == "32-true"))


def test_a_named_precision_is_kept_and_other_devices_stay_in_fp32():
    assert precision.resolve("16-mixed", "cpu") == ("16-mixed", None)
    assert precision.resolve("32-true", "auto") == ("32-true", None)
    chosen, why = precision.resolve("auto", "mps")
    assert chosen == "32-true" and "trainer.accelerator=mps" in why


def test_the_default_trainer_resolves_auto_in_place(monkeypatch):
    cfg = compose_config()
    assert cfg.trainer.precision == "auto"
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    line = precision.apply_auto(cfg.trainer)
    assert cfg.trainer.precision == "32-true"
    assert line == "trainer.precision=auto: 32-true (this CPU has no AMX, where bf16 runs slower than fp32)"
    assert precision.apply_auto(cfg.trainer) is None  # resolved once: a named precision stays
    assert OmegaConf.select(cfg, "trainer.precision") == "32-true"


def test_a_run_folder_records_what_auto_resolved_to(tmp_path, monkeypatch):
    """A resume reads the run folder's config: had it kept `auto`, a resume on a machine with other CPU flags would
    continue at another precision than the run began with."""
    import in_process
    from conftest import SMOKE

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    run_dir = tmp_path / "run"
    outcome = in_process.run(
        "train.py",
        *SMOKE,
        "trainer.precision=auto",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        stop_after_first_step=True,
    )
    assert outcome.code == 0, outcome.stderr
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert saved.trainer.precision == "32-true"
    composed = compose_config(*SMOKE, "trainer.precision=auto")
    composed.trainer.precision = "32-true"
    assert OmegaConf.to_container(saved) == OmegaConf.to_container(composed)  # nothing else rewritten
    assert "trainer.precision=auto: 32-true" in outcome.stdout + outcome.stderr
