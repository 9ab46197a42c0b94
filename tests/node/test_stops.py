"""Stop strings over a stream of deltas: never leak a partial stop, never lose text before it."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from darkbloom.node.engine.stops import StopMatcher


def run(stops: tuple[str, ...], deltas: list[str]) -> tuple[list[str], bool]:
    """Feed ``deltas`` in order; return everything emitted (flush included unless a stop hit) and whether one hit."""
    matcher = StopMatcher(stops)
    emitted = []
    for delta in deltas:
        text, hit = matcher.feed(delta)
        emitted.append(text)
        if hit:
            return emitted, True
    emitted.append(matcher.flush())
    return emitted, False


def test_stop_split_across_many_deltas_is_never_emitted_even_partially() -> None:
    stop = "<|END|>"
    deltas = ["Hello", " wor", "ld", "<", "|", "E", "N", "D", "|", ">", "after"]
    matcher = StopMatcher((stop,))
    emitted = ""
    for delta in deltas:
        text, hit = matcher.feed(delta)
        emitted += text
        # Nothing emitted so far may end with a prefix of the stop string.
        assert not any(emitted.endswith(stop[:i]) for i in range(1, len(stop) + 1))
        if hit:
            break
    assert hit
    assert emitted == "Hello world"


def test_text_before_the_stop_is_emitted_in_full_and_text_after_is_dropped() -> None:
    emitted, hit = run(("STOP",), ["abcST", "OPdef"])
    assert (hit, "".join(emitted)) == (True, "abc")
    emitted, hit = run(("STOP",), ["abc", "xyzSTOPdef"])
    assert (hit, "".join(emitted)) == (True, "abcxyz")


def test_stop_at_the_very_start_emits_nothing() -> None:
    emitted, hit = run(("\n\n",), ["\n", "\nHello"])
    assert (hit, "".join(emitted)) == (True, "")


def test_at_most_len_stop_minus_one_characters_are_held_back() -> None:
    matcher = StopMatcher(("abc",))
    assert matcher.feed("xyzab") == ("xyz", False)
    assert matcher.feed("d") == ("a", False)
    assert matcher.feed("efg") == ("bde", False)
    assert matcher.flush() == "fg"


def test_flush_returns_held_back_text_when_no_stop_hits() -> None:
    matcher = StopMatcher(("</answer>",))
    emitted = matcher.feed("The answer")[0] + matcher.feed(" is </ans")[0]
    held = matcher.flush()
    assert held  # "</ans" might have become "</answer>"
    assert emitted + held == "The answer is </ans"
    assert matcher.flush() == ""  # a second flush has nothing left


def test_earliest_of_several_stops_wins() -> None:
    emitted, hit = run(("world", "lo"), ["hel", "lo world"])
    assert (hit, "".join(emitted)) == (True, "hel")


def test_no_stops_passes_everything_through_immediately() -> None:
    matcher = StopMatcher(())
    assert matcher.feed("any thing") == ("any thing", False)
    assert matcher.flush() == ""


def test_empty_stop_strings_are_ignored() -> None:
    matcher = StopMatcher(("",))
    assert matcher.feed("abc") == ("abc", False)


def test_single_character_stop_holds_nothing_back() -> None:
    matcher = StopMatcher(("\n",))
    assert matcher.feed("line one") == ("line one", False)
    assert matcher.feed(" more\nline two") == (" more", True)


@st.composite
def split_text(draw: st.DrawFn, alphabet: str = "ab\n<>|") -> tuple[str, list[str], str]:
    """A text over a small alphabet (so stops actually occur), cut at random points, and a stop string."""
    text = draw(st.text(alphabet, max_size=60))
    stop = draw(st.text(alphabet, min_size=1, max_size=6))
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=20)))
    bounds = [0, *cuts, len(text)]
    return text, [text[a:b] for a, b in itertools.pairwise(bounds)], stop


@given(split_text())
def test_output_is_the_text_up_to_the_first_stop_however_it_is_split(case: tuple[str, list[str], str]) -> None:
    text, deltas, stop = case
    emitted, hit = run((stop,), deltas)
    first = text.find(stop)
    assert hit == (first >= 0)
    assert "".join(emitted) == (text[:first] if first >= 0 else text)


@given(split_text())
def test_emitted_text_never_ends_inside_a_stop_that_completes_later(case: tuple[str, list[str], str]) -> None:
    text, deltas, stop = case
    first = text.find(stop)
    matcher = StopMatcher((stop,))
    emitted = ""
    for delta in deltas:
        chunk, hit = matcher.feed(delta)
        emitted += chunk
        if hit:
            break
        if first >= 0:
            assert len(emitted) <= first  # nothing of the stop, or past it, ever got out


def test_the_matched_stop_string_is_reported() -> None:
    m = StopMatcher(("END", "\n\n"))
    assert m.matched is None
    assert m.feed("abc") == ("a", False) and m.matched is None
    assert m.feed("\n\nxyz") == ("bc", True)
    assert m.matched == "\n\n"
