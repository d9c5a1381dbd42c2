# The checkout's spaces/ folder is installed as prunetune.spaces (pyproject.toml, package-dir);
# this stub says so to mypy and pyright in a plain checkout (see [tool.mypy] there).
from spaces import *  # noqa: F403
