"""One memory rule on both sides: orion_jupyter.vgpu and the labextension read tests/memory_cases.json.

The labextension's unit tests (labextension/test/format.test.ts and kernelname.test.ts, `npm test`)
check its readMemory, readCount, formatMib, formatAllocation and unbrokenPhrases against the same rows,
so "4G" is 3814 MiB in the dialog exactly as on the server.
"""

import json
from pathlib import Path

import pytest

from orion_jupyter.vgpu import (
    VGPURequestError,
    format_allocation,
    format_mib,
    parse_count,
    parse_memory,
    unbroken_phrases,
)

CASES = json.loads((Path(__file__).parent / "memory_cases.json").read_text())


def _id(row):
    return repr(row.get("input", row.get("mib")))


@pytest.mark.parametrize("row", CASES["parse_memory"], ids=_id)
def test_parse_memory(row):
    if "error" in row:
        with pytest.raises(VGPURequestError) as refused:
            parse_memory(row["input"])
        assert str(refused.value) == row["error"]
        assert refused.value.field == "memory"
    else:
        assert parse_memory(row["input"]) == row["mib"]


@pytest.mark.parametrize("row", CASES["parse_count"], ids=_id)
def test_parse_count(row):
    if "error" in row:
        with pytest.raises(VGPURequestError) as refused:
            parse_count(row["input"])
        assert str(refused.value) == row["error"]
        assert refused.value.field == "vgpus"
    else:
        assert parse_count(row["input"]) == row["count"]


@pytest.mark.parametrize("row", CASES["format_mib"], ids=_id)
def test_format_mib(row):
    assert format_mib(row["mib"]) == row["text"]


@pytest.mark.parametrize("row", CASES["format_allocation"], ids=lambda row: row["text"])
def test_format_allocation(row):
    assert format_allocation(row["vgpus"], row["memory_mib"], row["compute_percent"]) == row["text"]


@pytest.mark.parametrize("row", CASES["unbroken_phrases"], ids=lambda row: row["text"])
def test_unbroken_phrases(row):
    assert unbroken_phrases(row["text"]) == row["unbroken"]


def test_the_table_covers_both_kinds_of_units():
    # "4G" is decimal (4·10⁹ bytes) and "4Gi" binary: the dialog once read both as 4 GiB.
    by_input = {row["input"]: row for row in CASES["parse_memory"]}
    assert by_input["4G"]["mib"] == 3814 and by_input["4Gi"]["mib"] == 4096 and by_input["4096"]["mib"] == 4096
