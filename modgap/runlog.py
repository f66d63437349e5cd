"""Per-rule logging: send a job's stdout, stderr (tqdm bars included) and `logging` to its log file."""
from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def logged(path: str | Path) -> Iterator[logging.Logger]:
    """Redirect output to `path` for the duration; an exception is logged with its traceback and re-raised."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", buffering=1) as f, contextlib.redirect_stderr(f), contextlib.redirect_stdout(f):
        handler = logging.StreamHandler(f)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log = logging.getLogger("modgap")
        log.setLevel(logging.INFO)
        log.addHandler(handler)
        try:
            yield log
        except BaseException:
            traceback.print_exc(file=f)
            raise
        finally:
            log.removeHandler(handler)
