"""The run slot shared by a supervised worker and its supervisor."""

from __future__ import annotations

from pathlib import Path

from vox_flow.worker.runslot import Run, RunSlot


def test_writer_and_reader_see_the_same_run(tmp_path: Path) -> None:
    writer = RunSlot(tmp_path / "0.slot", create=True)
    reader = RunSlot(tmp_path / "0.slot")
    assert reader.read() == Run()
    run = Run("task-1", "tag-1", "t.name", 12.5, 30.0, ["tag-1", "tag-2"])
    writer.write(run)
    assert reader.read() == run
    writer.write(Run(held=["tag-2"]))
    assert reader.read() == Run(held=["tag-2"])
    writer.close()
    reader.close()


def test_an_oversized_held_list_is_dropped_not_torn(tmp_path: Path) -> None:
    slot = RunSlot(tmp_path / "0.slot", create=True)
    run = Run("t", "tag", "n", 1.0, 2.0, [f"tag-{i:060d}" for i in range(5000)])
    slot.write(run)
    assert slot.read() == Run("t", "tag", "n", 1.0, 2.0, [])
    slot.close()
