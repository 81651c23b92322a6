"""The rules of one run about large files sent while hashed (``SendingAhead``)."""

from __future__ import annotations

from putplace.client.ahead import SendingAhead


def test_one_file_of_each_size_per_run_and_at_most_the_turns_at_once() -> None:
    ahead: SendingAhead[str] = SendingAhead(turns=2)
    assert ahead.claim(100)
    assert not ahead.claim(100)  # a copy, a hard link: hashed first
    assert ahead.claim(200)
    assert not ahead.claim(300)  # both turns taken
    ahead.give_back()
    assert ahead.claim(300)
    ahead.give_back()
    ahead.over(100)
    assert not ahead.claim(100)  # sent once in this run, even when over


def test_files_of_a_size_being_sent_wait_for_it_and_are_handed_back_in_order() -> None:
    ahead: SendingAhead[str] = SendingAhead(turns=1)
    assert not ahead.waits(100, "nothing is being sent")
    assert ahead.claim(100)
    assert not ahead.waits(101, "another size")
    assert ahead.waits(100, "first copy")
    assert ahead.waits(100, "second copy")
    assert ahead.over(100) == ["first copy", "second copy"]
    assert not ahead.waits(100, "registered after it: no need to wait")
    assert ahead.over(100) == []
