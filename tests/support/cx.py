"""
Running a ``cx`` command in-process on a temporary HOME: every file it could
touch (the store, its state, Codex's, OpenCode's and pi's logins) is under
the test's folder.
"""

from __future__ import annotations

import io
from pathlib import Path

from subrouter.cli.cx import CxOptions, Streams, run_cx


def cx(tmp_path: Path, *argv: str, stdin: str = "", env: dict[str, str] | None = None
       ) -> tuple[int, str, str]:
    """
    Run ``cx *argv`` with the store in ``tmp_path/store``, the state in
    ``tmp_path/state`` and HOME at ``tmp_path``.

    :param stdin: what it reads.
    :param env: more environment, over the temporary one.
    :return: the exit status, stdout and stderr.
    """
    options = CxOptions()
    options.parseOptions(["--accounts-dir", str(tmp_path / "store"),
                          "--state-dir", str(tmp_path / "state"), *argv])
    out, err = io.StringIO(), io.StringIO()
    environ = {"HOME": str(tmp_path), "CODEX_HOME": str(tmp_path / "codex"),
               "XDG_DATA_HOME": str(tmp_path / "xdg"),
               "PI_CODING_AGENT_DIR": str(tmp_path / "pi"), **(env or {})}
    code = run_cx(options, Streams(out, err, io.StringIO(stdin), environ))
    return code, out.getvalue(), err.getvalue()
