"""Importing a part of encdec costs only that part; exports with encdec's own decoders still load after `import encdec`.

Each check runs in a fresh interpreter: this one has imported torch and transformers long ago.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import ROOT, script_environment
from test_cross_attention import compose as cross_attention_model
from test_cross_attention import decoder_batch, source_batch
from test_prefix_attention import compose as prefix_pair
from test_prefix_attention import lm_of

HEAVY = ("torch", "transformers", "lightning")
REGISTERED = ("encdec_cross_attention_decoder", "encdec_prefix_encoder", "encdec_prefix_decoder")

pytestmark = pytest.mark.usefixtures("single_thread")


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = script_environment({"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


def last_json(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# Prints which of encdec's model types transformers knows, and whether the import hook is gone and left no trace.
REGISTRATION = f"""
    import importlib, json, sys
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    print(json.dumps({{
        "registered": [name for name in {REGISTERED!r} if name in CONFIG_MAPPING],
        "hooks_left": [type(finder).__name__ for finder in sys.meta_path
                       if type(finder).__module__ == "encdec.auto_classes"],
        "transformers_loader": type(sys.modules["transformers"].__spec__.loader).__name__,
    }}))
"""


def test_the_package_the_report_and_the_run_folder_import_neither_torch_nor_transformers():
    result = python(
        """
        import json, sys
        import encdec, encdec.report, encdec.run_folder, encdec.errors, encdec.console
        print(json.dumps([name for name in HEAVY if name in sys.modules]))
    """.replace("HEAVY", repr(HEAVY))
    )
    assert last_json(result) == []


def test_encdec_report_imports_neither_torch_nor_transformers():
    # The root report.py is checked in test_report.py; this is the installed command's subcommand.
    result = python(
        """
        import json, sys
        from encdec.console import main
        try:
            main(["report", "--help"])
        except SystemExit as done:  # argparse's --help
            assert done.code == 0, done.code
        print(json.dumps([name for name in HEAVY if name in sys.modules]))
    """.replace("HEAVY", repr(HEAVY))
    )
    assert result.stdout.startswith("usage: encdec report ")
    assert last_json(result) == []


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A model whose decoder has encdec's cross-attention and a prefix pair, saved with save_pretrained (no remote
    code), the inputs, and the logits each gives before saving."""
    folder = tmp_path_factory.mktemp("exports")
    input_ids, attention_mask = source_batch()
    decoder_input_ids, decoder_attention_mask = decoder_batch()
    inputs = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        decoder_input_ids=decoder_input_ids,
        decoder_attention_mask=decoder_attention_mask,
    )
    expected = {}
    for name, model in (
        ("cross_attention", cross_attention_model("llama", gate=0.5)),
        ("prefix", prefix_pair(lm_of("llama"))),
    ):
        with torch.no_grad():
            expected[name] = model(**inputs).logits
        model.save_pretrained(folder / name)
        assert "auto_map" not in json.loads((folder / name / "config.json").read_text())
    torch.save(inputs, folder / "inputs.pt")
    return folder, expected


# Old user code: `import encdec`, then plain transformers loading, no trust_remote_code.
LOAD_EXPORTS = (
    """
    import sys
    %s
    heavy_before = [name for name in ("torch", "transformers") if name in sys.modules]
    import torch
    from transformers import AutoModelForSeq2SeqLM, EncoderDecoderModel

    folder = sys.argv[1]
    inputs = torch.load(f"{folder}/inputs.pt")
    logits = {}
    for name, load in (("cross_attention", AutoModelForSeq2SeqLM), ("prefix", EncoderDecoderModel)):
        model = load.from_pretrained(f"{folder}/{name}").eval()
        with torch.no_grad():
            logits[name] = model(**inputs).logits
        logits[name + ":classes"] = [type(model.encoder).__name__, type(model.decoder).__name__]
    torch.save(logits, f"{folder}/reloaded.pt")
    print(heavy_before)
"""
    + REGISTRATION
)


@pytest.mark.parametrize(
    "imports, heavy_before",
    [
        ("import encdec", []),
        pytest.param(
            "import transformers; import encdec", ["torch", "transformers"], marks=pytest.mark.slow
        ),  # at once
    ],
)
def test_exports_with_encdec_decoders_load_after_import_encdec(exports, imports, heavy_before):
    folder, expected = exports
    result = python(LOAD_EXPORTS % imports, str(folder))
    state = last_json(result)
    assert result.stdout.splitlines()[-2] == repr(heavy_before)
    assert state == {"registered": list(REGISTERED), "hooks_left": [], "transformers_loader": "SourceFileLoader"}
    assert "could not register" not in result.stderr
    reloaded = torch.load(folder / "reloaded.pt")
    for name in expected:
        assert torch.equal(reloaded[name], expected[name]), name
    assert reloaded["cross_attention:classes"] == ["BertModel", "CrossAttentionDecoderForCausalLM"]
    assert reloaded["prefix:classes"] == ["PrefixEncoderModel", "PrefixDecoderForCausalLM"]


@pytest.mark.parametrize(
    "first",
    [
        "encdec.cross_attention",
        pytest.param("encdec.prefix_attention", marks=pytest.mark.slow),
        pytest.param("encdec.models", marks=pytest.mark.slow),
    ],
)
def test_whichever_module_imports_transformers_first_every_class_is_registered(first):
    # transformers is then first imported while that module is half made: the registration waits for it to finish.
    result = python(f"import encdec, {first}\n" + textwrap.dedent(REGISTRATION))
    assert last_json(result) == {
        "registered": list(REGISTERED),
        "hooks_left": [],
        "transformers_loader": "SourceFileLoader",
    }
    assert "could not register" not in result.stderr


def test_a_failed_registration_warns_once_and_transformers_still_imports():
    result = python("""
        import json, sys, warnings

        class Broken:
            def find_spec(self, name, path=None, target=None):
                if name == "encdec.prefix_attention":
                    raise ImportError("encdec.prefix_attention is broken here")

        import encdec
        encdec.auto_classes.install()  # a second install adds no second hook
        sys.meta_path.insert(0, Broken())
        hooks = sum(type(finder).__module__ == "encdec.auto_classes" for finder in sys.meta_path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import transformers
            from transformers import AutoConfig
            import transformers.models.auto.modeling_auto
        print(json.dumps({"hooks": hooks, "warnings": [str(w.message) for w in caught if "encdec" in str(w.message)],
                          "AutoConfig": AutoConfig.__name__}))
    """)
    state = last_json(result)
    assert state["hooks"] == 1 and state["AutoConfig"] == "AutoConfig"
    assert state["warnings"] == [
        "encdec could not register its models with transformers' Auto classes (ImportError: encdec.prefix_attention "
        "is broken here); import encdec.prefix_attention before from_pretrained to see why"
    ]
