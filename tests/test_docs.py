"""Every shell block of README.md and docs/*.md runs, as written, in CI.

Rules (the doc-test convention):

- A fenced ```bash (or ```sh / ```shell) block runs, unless the nearest non-blank line above its fence is
  ``<!-- doctest: skip (REASON) -->`` (e.g. ``skip (gpu)``, ``skip (network)``, ``skip (slow: run by CI
  separately)``). Any other fence (```text, ```console, ```json, ```python, a bare ```) is not run.
- The blocks of one file run in order in one fresh scratch copy of the repository (tracked and untracked, not
  ignored files), from its root, with ``../shared`` pointing at the real shared data, ``.venv`` at the test
  virtual environment and its ``bin`` first on ``PATH``: a later block may use an earlier block's files, nothing
  is written to the checkout, and nothing is left behind.
- Each block runs with ``bash -e -o pipefail`` in its own process group, which is killed when the block ends (a
  demo server left running by a failing block does not outlive it).
- A ```text / ```console block preceded by ``<!-- doctest: output -->`` is the previous runnable block's output:
  each of its non-blank lines must appear in that block's stdout + stderr (whitespace-normalised, in order;
  ``...`` inside a line matches anything), so shown output cannot drift from the real one.

Files run two at a time (``DOCTEST_JOBS``), so a block that starts a server takes a port no other doc uses
(in use now: 8011 eval.md, 8765/8766 annotate_and_calibrate.md, 8771 README.md, 8772 training.md, 8773 judge.md) and waits for it
with ``python -m perception_r1.testing.openai_server --wait URL``.

Run one file by hand: ``.test-venv/bin/python tests/test_docs.py docs/eval.md`` (prints each block's time).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from process_state import has_ended

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PERCEPTION_R1_SHARED_DATA", REPO.parent / "shared" / "data")).resolve().parent
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUN_LANGUAGES = {"bash", "sh", "shell"}
SKIP = re.compile(r"^<!--\s*doctest:\s*skip\s*\(([^)]*)\)\s*-->$")
OUTPUT = re.compile(r"^<!--\s*doctest:\s*output\s*-->$")
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
BLOCK_TIMEOUT_S = 600


@dataclass
class Block:
    """One fenced block: where it starts, its language, its code, and what the markers above it say."""

    path: Path
    line: int
    language: str
    code: str
    skip: str | None = None
    expected_output: list[str] = field(default_factory=list)

    @property
    def runs(self) -> bool:
        return self.language in RUN_LANGUAGES and self.skip is None

    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def parse_blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, with their skip markers and any expected output attached."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, language = match.groups()
        start = i
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1  # the closing fence
        above = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        skip = SKIP.match(above)
        block = Block(path, start + 1, language.lower(), "\n".join(body) + "\n", skip.group(1) if skip else None)
        if OUTPUT.match(above) and language.lower() in ("text", "console", ""):
            previous = next((b for b in reversed(blocks) if b.runs), None)
            if previous is None:
                raise ValueError(f"{block.where()}: an output block without a runnable block before it")
            previous.expected_output = [line for line in body if line.strip()]
            block.skip = "output of the block above"
        blocks.append(block)
    return blocks


def _normalise(text: str) -> str:
    return " ".join(text.split())


def missing_output(expected: list[str], output: str) -> str | None:
    """The first expected line that is not in ``output`` (in order), or ``None`` when all are."""
    haystack = _normalise(output)
    position = 0
    for line in expected:
        pattern = ".*?".join(re.escape(part) for part in _normalise(line).split("..."))
        found = re.compile(pattern).search(haystack, position)
        if found is None:
            return line
        position = found.end()
    return None


def scratch_copy(root: Path) -> Path:
    """A copy of the checkout's files (no ignored ones) at ``root/repo``, with ``../shared`` and ``.venv``."""
    repo = root / "repo"
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an sdist): copy minus the usual
        skip = shutil.ignore_patterns(".git", ".venv", ".test-venv", "outputs", "__pycache__", "*.egg-info", "swanlog")
        shutil.copytree(REPO, repo, ignore=skip, symlinks=True)
        listed = []
    for raw in listed:
        if not raw:
            continue
        rel = Path(raw.decode())
        source = REPO / rel
        if not source.is_file():  # deleted in the work tree, or a submodule
            continue
        target = repo / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    (root / "shared").symlink_to(SHARED, target_is_directory=True)
    (repo / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    return repo


def block_env(repo: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "JUDGE_", "PERCEPTION_R1_"))}
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env["PERCEPTION_R1_NO_PROGRESS"] = "1"
    env["PERCEPTION_R1_SHARED_DATA"] = str(SHARED / "data")
    return env


@dataclass
class Result:
    block: Block
    returncode: int
    output: str
    seconds: float


def run_block(block: Block, repo: Path, env: dict[str, str]) -> Result:
    """Run one block in its own process group (killed afterwards, with anything it left running).

    The output goes to a file, not a pipe: a background server the block left behind (say, after ``bash -e``
    stopped at a failing line) keeps its inherited stderr open, and reading a pipe to EOF would wait for it forever.
    """
    start = time.monotonic()
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as sink:
        proc = subprocess.Popen(
            ["bash", "-e", "-o", "pipefail", "-c", block.code],
            cwd=repo,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        timed_out = False
        try:
            proc.wait(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc.pid)
            proc.wait()
        sink.seek(0)
        output = sink.read()
    if timed_out:
        output += f"\n[doctest: killed after {BLOCK_TIMEOUT_S} s]"
    return Result(block, proc.returncode, output, time.monotonic() - start)


def _kill_group(pgid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        time.sleep(0.2)


def run_file(path: Path) -> list[Result]:
    """Every runnable block of ``path`` in order, in one scratch copy; stops at the first failure."""
    results = []
    with tempfile.TemporaryDirectory(prefix="doctest_") as tmp:
        repo = scratch_copy(Path(tmp))
        env = block_env(repo)
        for block in parse_blocks(path):
            if not block.runs:
                continue
            result = run_block(block, repo, env)
            results.append(result)
            if result.returncode != 0 or (
                block.expected_output and missing_output(block.expected_output, result.output)
            ):
                break
    return results


def failure(result: Result) -> str | None:
    """Why a block failed, with the tail of its output; ``None`` when it passed."""
    block = result.block
    if result.returncode != 0:
        why = f"exited {result.returncode}"
    else:
        line = missing_output(block.expected_output, result.output) if block.expected_output else None
        if line is None:
            return None
        why = f"its output lacks the documented line {line!r}"
    tail = "\n".join(result.output.splitlines()[-40:])
    return f"{block.where()}: the ```{block.language} block {why}.\n--- block ---\n{block.code}--- output (tail) ---\n{tail}"


def _files_with_runnable_blocks() -> list[Path]:
    return [p for p in DOC_FILES if any(b.runs for b in parse_blocks(p))]


def test_every_shell_block_runs_or_is_marked() -> None:
    """Markers name a reason, and a runnable-looking block never hides in an unmarked bare fence."""
    for path in DOC_FILES:
        for block in parse_blocks(path):
            if block.language in RUN_LANGUAGES and block.skip is not None:
                assert block.skip.strip(), f"{block.where()}: a skip marker needs a reason in parentheses"
            if block.runs:
                # an install in the scratch copy would re-point the shared test venv's editable install at a
                # directory that is deleted afterwards (every later test then fails to import perception_r1)
                assert not re.search(r"\bpip3? install\b|\buv pip\b", block.code), (
                    f"{block.where()}: installs packages; mark it `<!-- doctest: skip (install: ...) -->`"
                )


def test_each_doc_server_port_is_used_by_one_file_only() -> None:
    """Files run in parallel: two files starting servers on one port would answer each other's requests."""
    owner: dict[str, Path] = {}
    for path in DOC_FILES:
        for block in parse_blocks(path):
            if not block.runs:
                continue
            for port in re.findall(r"--port[= ](\d+)", block.code):
                assert owner.setdefault(port, path) == path, (
                    f"{block.where()}: port {port} is also used by {owner[port].relative_to(REPO)}"
                )


def test_a_block_that_fails_with_a_server_left_running_ends_and_kills_it(tmp_path: Path) -> None:
    """``bash -e`` stops at the failing line; the background job still holds the output open and is killed."""
    code = "sleep 1000 &\necho $! > pid\necho started\nfalse\necho never\n"
    result = run_block(Block(tmp_path / "x.md", 1, "bash", code), tmp_path, dict(os.environ))
    assert result.returncode == 1 and result.output == "started\n"
    assert has_ended(int((tmp_path / "pid").read_text()))


@pytest.fixture(scope="session")
def doc_results(request: pytest.FixtureRequest) -> dict[Path, list[Result]]:
    """The results of every selected doc file, run ``DOCTEST_JOBS`` (default 2) files at a time: the files are
    independent (own scratch copy, own ports), and CI has two cores."""
    from concurrent.futures import ThreadPoolExecutor

    selected = [
        item.callspec.params["path"]
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_doc_blocks_run" and hasattr(item, "callspec")
    ]
    jobs = max(1, int(os.environ.get("DOCTEST_JOBS", "2")))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return dict(zip(selected, pool.map(run_file, selected), strict=True))


@pytest.mark.parametrize("path", _files_with_runnable_blocks(), ids=lambda p: str(p.relative_to(REPO)))
def test_doc_blocks_run(path: Path, doc_results: dict[Path, list[Result]]) -> None:
    results = doc_results[path]
    problems = [message for r in results if (message := failure(r))]
    assert not problems, problems[0]
    ran = sum(b.runs for b in parse_blocks(path))
    assert len(results) == ran


def test_parser_and_output_matching(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "x\n\n```bash\necho hi\n```\n\n<!-- doctest: output -->\n```text\nhi\n```\n\n"
        "<!-- doctest: skip (gpu) -->\n```bash\nnvidia-smi\n```\n\n```python\nprint(1)\n```\n\n```console\n$ ls\n```\n",
        encoding="utf-8",
    )
    blocks = parse_blocks(doc)
    assert [(b.language, b.runs, b.skip) for b in blocks] == [
        ("bash", True, None),
        ("text", False, "output of the block above"),
        ("bash", False, "gpu"),
        ("python", False, None),
        ("console", False, None),
    ]
    assert blocks[0].expected_output == ["hi"]
    assert missing_output(["accuracy 0.2500 (...)", "done"], "x accuracy 0.2500 (10/40)\n  done\n") is None
    assert missing_output(["done", "accuracy"], "accuracy\ndone") == "accuracy"  # order matters


def main(argv: list[str]) -> int:
    """``python tests/test_docs.py [FILE.md ...]``: run the blocks, print one line per block and the total time."""
    paths = [Path(a).resolve() for a in argv] or DOC_FILES
    failed = 0
    total = time.monotonic()
    for path in paths:
        for result in run_file(path):
            message = failure(result)
            failed += message is not None
            print(f"{'FAIL' if message else 'ok  '} {result.seconds:6.1f} s  {result.block.where()}", flush=True)
            if message:
                print(message)
    print(f"{time.monotonic() - total:.1f} s in all, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
