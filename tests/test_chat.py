"""`memengine chat`: its commands on a real store, and the whole program driven through a
pseudo-terminal with a real GGUF, across a restart. Assertions are on the context sent to
the model (`/context` prints the exact system prompt), never on the small model's wording."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest

from engine.cli.chat import Chat, system_prompt

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_commands_show_forget_and_history(make_memory) -> None:  # type: ignore[no-untyped-def]
    memory = make_memory()
    memory.add(["User is allergic to peanuts", "User lives in Porto"], user_id="maria",
               observed_at="2026-05-01")
    memory.add("User lives in Oslo", user_id="joao")
    out: list[str] = []
    session = Chat(memory, None, user_id="maria", infer=False,  # type: ignore[arg-type]
                   echo=out.append)
    assert session.command("/context")
    assert out.pop() == "nothing sent to the model yet: say something first"
    session.command("/forget 1")
    assert "run /memory first" in out.pop()
    session.command("/memory")
    assert out == ["  1. User is allergic to peanuts (since 2026-05-01)",
                   "  2. User lives in Porto (since 2026-05-01)"]
    out.clear()
    session.command("/forget 7")
    assert "from 1 to 2" in out.pop()
    session.command("/forget 2")
    assert "forgot: User lives in Porto" in out.pop()
    assert [f.text for f in memory.get_all("maria")] == ["User is allergic to peanuts"]
    assert [f.text for f in memory.get_all("joao")] == ["User lives in Oslo"]
    session.command("/history")
    assert [line.split("  ", 1)[1] for line in out] == [
        "learned: User is allergic to peanuts", "learned: User lives in Porto",
        "delete: User lives in Porto"]
    assert not session.command("/quit")


def test_the_system_prompt_holds_the_memory_block(make_memory) -> None:  # type: ignore[no-untyped-def]
    memory = make_memory()
    memory.add("User is allergic to peanuts", user_id="maria", observed_at="2026-05-01")
    block = memory.context("what should I cook?", user_id="maria")
    prompt = system_prompt("maria", block, date(2026, 6, 1))
    assert "Today is 2026-06-01" in prompt
    assert prompt.endswith(block.text) and "allergic to peanuts (since 2026-05-01)" in prompt
    empty = memory.context("what should I cook?", user_id="joao")
    assert 'Nothing is remembered about the user "joao" yet.' in system_prompt(
        "joao", empty, date(2026, 6, 1))


class Terminal:
    """A `python -m engine ... chat` process on a pseudo-terminal."""

    def __init__(self, *args: str) -> None:
        main, side = pty.openpty()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "dumb"}
        self.process = subprocess.Popen([sys.executable, "-m", "engine", *args], cwd=ROOT,
                                        stdin=side, stdout=side, stderr=side, env=env,
                                        close_fds=True)
        os.close(side)
        self.fd = main
        self.seen = ""

    def read_until(self, text: str, timeout: float = 60) -> str:
        """Output up to and including the next ``text``; everything read is in ``seen``."""
        deadline = time.monotonic() + timeout
        buffer = ""
        while text not in buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {text!r} in time; output so far:\n{self.seen}{buffer}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                continue
            try:
                chunk = os.read(self.fd, 4096).decode("utf-8", "replace")
            except OSError:  # the process ended
                raise AssertionError(f"ended before {text!r}:\n{self.seen}{buffer}") from None
            buffer += ANSI.sub("", chunk).replace("\r", "")
        self.seen += buffer
        return buffer

    def say(self, line: str) -> str:
        """Send a line and return what came back up to the next prompt."""
        os.write(self.fd, (line + "\n").encode())
        return self.read_until("you> ")

    def quit(self) -> None:
        os.write(self.fd, b"/quit\n")
        assert self.process.wait(timeout=60) == 0, self.seen
        with_rest = ""
        try:
            while select.select([self.fd], [], [], 0.2)[0]:
                with_rest += os.read(self.fd, 4096).decode("utf-8", "replace")
        except OSError:
            pass
        self.seen += ANSI.sub("", with_rest).replace("\r", "")
        os.close(self.fd)


@pytest.mark.model
def test_a_restarted_chat_still_knows_the_user(tmp_path: Path) -> None:
    from conftest import require_gguf

    require_gguf("smollm2-135m")
    args = ("--db", str(tmp_path / "chat.duckdb"), "--embedder", "hashing", "chat", "-u",
            "maria", "--lm", "smollm2-135m", "--raw", "--max-tokens", "16")
    first = Terminal(*args)
    first.read_until("you> ")
    assert "0 facts remembered about maria" in first.seen
    answered = first.say("I am allergic to peanuts and I live in Porto")
    assert "· learned: I am allergic to peanuts and I live in Porto" in answered  # dim line
    told = first.say("/memory")
    assert "1. I am allergic to peanuts and I live in Porto" in told
    first.quit()

    second = Terminal(*args)
    second.read_until("you> ")
    assert "1 facts remembered about maria" in second.seen
    assert "nothing sent to the model yet" in second.say("/context")
    second.say("What should I cook for dinner tonight?")
    sent = second.say("/context")
    prompt = sent.split("----- system prompt sent to the model -----\n", 1)[1]
    prompt = prompt.split("\n----- memory:", 1)[0]
    assert 'talking with the user "maria"' in prompt
    assert "About the user:\n- I am allergic to peanuts and I live in Porto (since " in prompt
    second.quit()


def test_the_chat_learns_from_the_user_never_from_its_own_answer(make_memory) -> None:  # type: ignore[no-untyped-def]
    from engine.extract import ExtractedFact
    from engine.extract.scripted import ScriptedExtractor

    reply = "Great! Since you live in Paris, try the jazz bars near Rue Oberkampf."
    extractor = ScriptedExtractor({
        "I am allergic to peanuts": [ExtractedFact("User is allergic to peanuts",
                                                   slot="allergies", value="peanuts")],
        reply: [ExtractedFact("User lives in Paris", slot="home city", value="Paris")],
    })
    memory = make_memory(extractor=extractor, infer=True)
    out: list[str] = []
    session = Chat(memory, None, user_id="maria", echo=out.append)  # type: ignore[arg-type]
    session.remember("I am allergic to peanuts", reply)
    session.finish()
    assert [f.text for f in memory.get_all("maria")] == ["User is allergic to peanuts"]
    learned = [line for line in out if "learned:" in line]
    assert len(learned) == 1 and "learned: User is allergic to peanuts" in learned[0]
    assert not any("Paris" in line for line in out)
