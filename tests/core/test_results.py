import json

import pytest

from motfm_core.evaluation.privacy import Audit, ClosePair, CopyGuard
from motfm_core.evaluation.report import REPORT_SCHEMA_VERSION, read_report


def _audit(**kw):
    return Audit(threshold=0.1, quantile=0.01, fraction_flagged=0.0, flagged=[], synthetic_nn={"median": 0.3},
                 test_nn={"median": 0.2}, closest=[ClosePair(1, 2, 0.25)], **kw)


def test_results_write_their_json_and_read_back_typed():
    bare = _audit()
    assert set(bare.to_json()) == {"threshold", "quantile", "fraction_flagged", "flagged", "synthetic_nn", "test_nn",
                                   "closest"}  # sections a run did not have are left out, not written as null
    full = _audit(reference_images=29, copy_guard=CopyGuard(False, None, 0, 0), png="pairs.png")
    data = json.loads(json.dumps(full.to_json()))
    assert data["copy_guard"] == {"enabled": False, "threshold": None, "redrawn_samples": 0, "redraws": 0}
    back = Audit.from_json(data)
    assert back == full and isinstance(back.closest[0], ClosePair) and isinstance(back.copy_guard, CopyGuard)
    with pytest.raises(ValueError, match="Audit: .*threshold"):
        Audit.from_json({k: v for k, v in data.items() if k != "threshold"})


def test_a_report_of_a_newer_schema_is_refused_by_name(tmp_path):
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"schema_version": REPORT_SCHEMA_VERSION + 1}))
    with pytest.raises(ValueError, match=r"report.json: report schema_version 3 is newer"):
        read_report(path)


def test_an_arm_short_of_its_ratio_says_so():
    """`real+synthetic 59 / 32` at ratio 1 read as a full arm; the report now says it fell short."""
    from motfm_core.evaluation.sections import shortfall as _shortfall

    assert _shortfall(1.0, 59, 32) == " (**short**: ratio 1 asks for 59; sample more)"
    assert _shortfall(1.0, 59, 59) == "" and _shortfall(float("inf"), 59, 32) == "" and _shortfall(None, 59, 3) == ""
