"""Write the train status of one run trained in a stack (rule train_member).

The stack's job (rule train_stack, through run_stage.py) trains every member and writes its own
status; each member's outcome is in its run_info.json (status complete, or failed with the
error, as madbench.stack writes it). This script turns the two into the run's status/train.json
in the format run_stage.py writes for a run trained alone, so evaluation, the tables and the
retry logic see no difference. Standard library only.
"""

import argparse
import json
import os
import time
from pathlib import Path


def read(path: Path) -> dict:
    """A JSON object from ``path`` ({} when it is missing or unreadable)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def member_status(stack: dict, info: dict) -> tuple[bool, str]:
    """(ok, error) of a member from its stack's status and its run_info."""
    if info.get("status") == "complete":
        return True, ""
    if info.get("status") == "failed" and info.get("error"):
        return False, str(info["error"])
    if stack.get("status") != "ok":
        return False, stack.get("error") or "the stack's training failed"
    return False, f"the stack finished but left this run {info.get('status', 'without run_info')}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stack-status", required=True, type=Path)
    p.add_argument("--status", required=True, help="the run's status/train.json to write")
    p.add_argument("--log", required=True, help="the run's train log (a pointer to the stack's)")
    p.add_argument("--attempt", type=int, default=1)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--meta", nargs="*", default=[], help="key=value pairs stored in the status")
    a = p.parse_args(argv)
    stack, info = read(a.stack_status), read(Path(a.run_dir, "run_info.json"))
    ok, error = member_status(stack, info)
    status = {k: int(v) if v.isdigit() else v for k, v in (kv.split("=", 1) for kv in a.meta)}
    status.update(run_dir=a.run_dir, stage="train", attempt=a.attempt, log=a.log)
    status.update(status="ok" if ok else "failed", failed_stage=None if ok else "train")
    status.update(returncode=stack.get("returncode"), error=error, stack=stack.get("stack"))
    status.update(stack_log=stack.get("log"), cuda_visible=stack.get("cuda_visible", ""))
    status.update(wall_s=info.get("train_wall_time_s"), finished=time.strftime("%FT%T%z"))
    Path(a.log).parent.mkdir(parents=True, exist_ok=True)
    Path(a.log).write_text(
        f"trained in stack {stack.get('stack')}: see {stack.get('log')} and {a.run_dir}/train.log\n"
        + (f"failed: {error}\n" if error else "")
    )
    Path(a.status).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(a.status).with_suffix(".tmp")
    tmp.write_text(json.dumps(status, indent=2) + "\n")
    os.replace(tmp, a.status)


if __name__ == "__main__":
    main()
