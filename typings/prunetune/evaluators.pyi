# The checkout's evaluators/ folder is installed as prunetune.evaluators (pyproject.toml, package-dir);
# this stub says so to mypy and pyright in a plain checkout (see [tool.mypy] there).
from evaluators import *  # noqa: F403
