"""encdec's Hydra sweeper: Bayesian hyperparameter search with Optuna (TPE by default), resumable from SQLite.

Select it with `override /hydra/sweeper: encdec_optuna` (see conf/hparams_search/). Hydra finds it because this
package lives in the `hydra_plugins` namespace package; keep `hydra_plugins/` free of an `__init__.py`.
The logic is in `_impl` and `_search_space` (imported only when a sweep starts: Hydra's plugin scan skips modules
whose names start with `_`, so it stays fast).
"""
