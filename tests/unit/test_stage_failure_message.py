"""The one line a failed barrier stage ends with, when a rank died without a word."""
from __future__ import annotations

from hovcaffe.distributed.backends.barrier import explain_stage_failure
from hovcaffe.distributed.protocol import RankError

# what a surviving Gloo rank reports when its peer's process is gone (shape of torch 2.x's text)
GLOO_TEXT = ("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
             "[127.0.0.1]:41234\nException raised from recvFromPeer at ../torch/csrc/Gloo.cpp:1 "
             "(most recent call first):\nframe #0: c10::Error::Error(...) + 0x96\n" + "x" * 400)


def test_a_killed_rank_is_named_and_the_survivor_is_quoted_in_one_short_line():
    survivor = RankError(0, "DistBackendError", GLOO_TEXT)
    spark_text = ("Job aborted due to stage failure: Could not recover from a failed barrier "
                  "ResultTask(3, 1)\nPython worker exited unexpectedly (crashed)")
    message = explain_stage_failure(RuntimeError(spark_text), [survivor], 2, 2.5)
    assert message.startswith("distributed job failed after 2.5s: rank 1 died without reporting")
    assert "Python worker exited unexpectedly (crashed)" in message
    quoted = message.split("; the others stopped with: ", 1)[1]
    assert quoted == ("rank 0 failed: DistBackendError: [../third_party/gloo/gloo/transport/tcp/"
                      "pair.cc:534] Connection closed by peer [127.0.0.1]:41234")


def test_brief_cuts_a_long_line_to_the_limit():
    brief = RankError(0, "RuntimeError", "y" * 500).brief()
    assert len(brief) == 160 and brief == "rank 0 failed: RuntimeError: " + "y" * 128 + "..."


def test_brief_keeps_a_short_error_whole():
    error = RankError(2, "ValueError", "bad label 12")
    assert error.brief() == str(error) == "rank 2 failed: ValueError: bad label 12"
