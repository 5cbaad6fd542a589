"""Batch rows: the spectra still to fit (what the journal lacks), one fit's catalog row or its failure, and
the recorder that journals rows as they come."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


from stellarfit.inference._batch_inputs import _read


def _message(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return f"{type(error).__name__}: {text}"


@dataclasses.dataclass
class _Item:
    """One spectrum to fit, with what its catalog row needs."""

    source: str
    index: int
    object_id: str | None
    format: str | None
    spectrum: Any


class _Recorder:
    """Journals rows (the driver alone writes the journal), counts them, moves the progress bar, calls the callback."""

    def __init__(self, journal, bar, callback: Callable[[dict[str, Any]], None] | None):
        self.journal = journal
        self.bar = bar
        self.callback = callback
        self.n_fitted = 0
        self.n_skipped = 0

    def record(self, row: dict[str, Any]) -> None:
        self.journal.append(row)
        self.n_fitted += 1
        self.bar.update(1)
        if self.callback is not None:
            self.callback(row)

    def skip(self) -> None:
        self.n_skipped += 1
        self.bar.update(1)


def _spectra_to_fit(files: Sequence[Path], recorder: _Recorder, *, format: str | None,  # noqa: A002
                    options: Mapping[str, Any], retry_failed: bool, method: str, emulator_name: str):
    """Read the files in order and yield an :class:`_Item` per spectrum still to fit.

    Entries already in the journal are skipped; unreadable files and unusable
    entries of multi-spectrum files are journaled as failed rows right here.
    """
    from stellarfit.results import failed_row

    journal, bar = recorder.journal, recorder.bar
    for path in files:
        source = str(path.resolve())
        common = {"source": source, "method": method, "emulator": emulator_name}
        unreadable = journal.rows.get((source, -1), {}).get("status") == "failed"
        if unreadable and not retry_failed:  # the file itself could not be read before
            recorder.skip()
            continue
        t0 = time.perf_counter()
        try:
            spectra = _read(path, format, options)
        except Exception as error:  # unreadable file: one failed row, go on
            recorder.record(failed_row(index=-1, error=_message(error), elapsed_s=time.perf_counter() - t0, **common))
            continue
        if unreadable:  # the file was unreadable before and reads now
            journal.append({**journal.rows[(source, -1)], "status": "superseded"})
        entries = [(int(s.metadata.get("row", i)), s, None) for i, s in enumerate(spectra)]
        entries += [(int(s.get("row", -2)), None, s) for s in getattr(spectra, "skipped", [])]
        bar.total += max(len(entries), 1) - 1
        bar.refresh()
        for index, spectrum, skipped in sorted(entries, key=lambda e: e[0]):
            if journal.done(source, index, retry_failed=retry_failed):
                recorder.skip()
                continue
            object_id = None
            if spectrum is not None:
                object_id = spectrum.metadata.get("object_id")
            elif skipped is not None:
                object_id = skipped.get("object_id")
            object_id = None if object_id is None else str(object_id)
            if skipped is not None:
                recorder.record(failed_row(index=index, error=f"unusable spectrum: {skipped.get('reason')}",
                                           object_id=object_id, elapsed_s=0.0, **common))
                continue
            yield _Item(source, index, object_id, spectrum.metadata.get("format"), spectrum)


def _fit_item(fit: Callable[..., Any], emulator, item: _Item, method: str, fit_options: Mapping[str, Any],
              emulator_name: str) -> dict[str, Any]:
    """The catalog row of one spectrum: its fit, or a failed row with the reason if the fit raises."""
    from stellarfit.inference.fit import FLAGS
    from stellarfit.results import failed_row, result_row

    t0 = time.perf_counter()
    try:
        result = fit(item.spectrum, emulator, method=method, **fit_options)
        return result_row(result, source=item.source, index=item.index, object_id=item.object_id, format=item.format)
    except Exception as error:  # one bad spectrum must not stop the catalog
        return failed_row(source=item.source, index=item.index, error=_message(error), object_id=item.object_id,
                          format=item.format, method=method, emulator=emulator_name, elapsed_s=time.perf_counter() - t0,
                          flags=FLAGS["fit_failed"])


def _fit_items(fit: Callable[..., Any], emulator, items: Sequence[_Item], method: str, fit_options: Mapping[str, Any],
               emulator_name: str, vectorize: int | None) -> list[dict[str, Any]]:
    """Catalog rows of ``items``: one fit per spectrum, or (``vectorize``) MAP or NUTS fits of
    ``vectorize`` spectra at a time in one vmapped program (:func:`~stellarfit.inference.fit_stars`)."""
    if not vectorize or len(items) < 2:
        return [_fit_item(fit, emulator, item, method, fit_options, emulator_name) for item in items]
    from stellarfit.inference.fit import FLAGS, fit_stars
    from stellarfit.results import failed_row, result_row

    t0 = time.perf_counter()
    try:
        results = fit_stars([item.spectrum for item in items], emulator, batch_size=vectorize, errors="collect",
                            method=method, **fit_options)
    except Exception:  # noqa: BLE001 - not a per-spectrum failure: fit one at a time, recording each reason
        return [_fit_item(fit, emulator, item, method, fit_options, emulator_name) for item in items]
    share = (time.perf_counter() - t0) / len(items)
    rows = []
    for item, result in zip(items, results):
        if isinstance(result, BaseException):
            rows.append(failed_row(source=item.source, index=item.index, error=_message(result), object_id=item.object_id,
                                   format=item.format, method=method, emulator=emulator_name, elapsed_s=share,
                                   flags=FLAGS["fit_failed"]))
        else:
            rows.append(result_row(result, source=item.source, index=item.index, object_id=item.object_id,
                                   format=item.format))
    return rows
