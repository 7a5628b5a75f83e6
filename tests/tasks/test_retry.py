"""Which failures a task retries: transient I/O and runtime errors, never bad input."""

import pytest
from prefect.states import Completed, Failed

from tasks import transient


@pytest.mark.parametrize("error, retried", [
    (OSError("disk full"), True), (RuntimeError("CUDA error: unspecified launch failure"), True),
    (ValueError("bad.nii.gz: cannot read NIfTI"), False), (FileNotFoundError("missing.zarr"), False),
    (PermissionError("read-only"), False), (KeyError("label"), False),
])
def test_only_transient_errors_are_retried(error, retried):
    assert transient(None, None, Failed(data=error)) is retried


def test_a_completed_state_is_not_retried():
    assert transient(None, None, Completed(data=1)) is False
