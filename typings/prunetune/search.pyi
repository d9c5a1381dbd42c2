# The checkout's search/ folder is installed as prunetune.search (pyproject.toml, package-dir);
# this stub says so to mypy and pyright in a plain checkout (see [tool.mypy] there).
from search import *  # noqa: F403
