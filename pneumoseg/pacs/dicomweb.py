"""Predict a study (or one series) held by a DICOMweb server: QIDO-RS, WADO-RS, STOW-RS.

``predict_dicomweb`` lists the study's instances (QIDO-RS), fetches each radiograph
(``pneumoseg.pacs.outputs.refusal`` says which) with WADO-RS **in its stored transfer syntax**
(``transfer-syntax=*``: the pixels decoded here are the ones ``pneumoseg predict`` decodes from
the same file, not a server's transcoding), predicts in batches and stores the results (SEG,
optionally SR and SC, ``make_outputs``) into the same study with STOW-RS. Works with any
DICOMweb server: Orthanc's DICOMweb plugin, dcm4chee, Google / Azure / AWS health imaging.

Idempotent: an instance whose SEG from the same predictor (same model, checkpoint, TTA, rule and
pneumoseg version: the SEG series ``output_series_uid``) is already in the study is skipped
(``redo=True`` predicts it again). Images with an empty prediction and ``seg_empty=False`` have
no SEG and are predicted again on the next call.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from pneumoseg.io.dicom.read import read_dicom
from pneumoseg.errors import PneumosegError
from pneumoseg.pacs import PacsError
from pneumoseg.pacs.outputs import INPUT_SOP_CLASSES, OUTPUT_KINDS, OutputOptions, make_outputs, output_series_uid, \
    predictor_fingerprint, refusal
from pneumoseg.util.paths import is_valid_uid
from pneumoseg.inference.inputs import InputImage
from pneumoseg.inference.predictor import Prediction, Predictor

__all__ = ["DicomwebResult", "predict_dicomweb"]

_SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_SOP_CLASS, _SOP_INSTANCE, _SERIES = "00080016", "00080018", "0020000E"
_ORIGINAL_SYNTAX = (("application/dicom", "*"),)


@dataclass
class DicomwebResult:
    """What ``predict_dicomweb`` did: counts, one (uid, probability, area_px) per prediction, failures."""

    url: str
    study: str
    series: str | None = None
    n_instances: int = 0      #: instances listed (the study, or the series)
    n_predicted: int = 0
    n_positive: int = 0
    n_already_done: int = 0   #: skipped: a SEG from the same predictor is in the study
    n_not_predicted: int = 0  #: other SOP classes, non-radiograph Secondary Captures, pneumoseg's own outputs
    stored: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTPUT_KINDS, 0))
    predictions: list[tuple[str, float, int]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _value(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _call(what: str, url: str, fn: Callable[[], Any]) -> Any:
    """Run one DICOMweb request; PacsError naming the server and the request when it fails."""
    try:
        return fn()
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else "?"
        raise PacsError(f"{url}: {what} failed (HTTP {code})") from None
    except requests.RequestException as exc:
        raise PacsError(f"{url}: {what} failed, server unreachable ({type(exc).__name__})") from None


def _done_sources(client: DICOMwebClient, url: str, study: str, listing: list[dict[str, Any]],
                  fingerprint: str) -> set[str]:
    """SOPInstanceUIDs referenced by SEGs of this predictor already in the study."""
    source_series = {_value(item, _SERIES) for item in listing}
    ours = {output_series_uid(s, "seg", fingerprint) for s in source_series}
    done: set[str] = set()
    for item in listing:
        series = _value(item, _SERIES)
        if _value(item, _SOP_CLASS) != _SEG_CLASS or series not in ours:
            continue
        sop = _value(item, _SOP_INSTANCE)
        meta = Dataset.from_json(_call("WADO-RS metadata", url, functools.partial(
            client.retrieve_instance_metadata, study, series, sop)))
        for ref_series in meta.get("ReferencedSeriesSequence", []):
            done |= {str(ref.ReferencedSOPInstanceUID) for ref in ref_series.get("ReferencedInstanceSequence", [])}
    return done


def _fetch(client: DICOMwebClient, url: str, study: str, series: str, uid: str) -> tuple[Dataset, InputImage] | str:
    """The instance and its image, or why it is not predicted (a refusal line)."""
    ds = _call(f"WADO-RS of instance {uid}", url,
               lambda: client.retrieve_instance(study, series, uid, media_types=_ORIGINAL_SYNTAX))
    reason = refusal(ds)
    if reason is not None:
        return reason
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    dcm = read_dicom(buf.getvalue(), name=f"{url} instance {uid}")
    return ds, InputImage(uid, dcm.pixels, Path(f"{uid}.dcm"), dcm.meta)


def _store(client: DICOMwebClient, url: str, study: str, datasets: list[Dataset], result: DicomwebResult) -> set[str]:
    """STOW-RS ``datasets`` into ``study``; returns the SOPInstanceUIDs the server did not store."""
    response = _call("STOW-RS", url, lambda: client.store_instances(datasets, study_instance_uid=study))
    failed = {str(item.get("ReferencedSOPInstanceUID", "")) for item in (response or Dataset()).get("FailedSOPSequence", [])}
    for ds in datasets:
        if str(ds.SOPInstanceUID) in failed:
            result.failures.append(f"{url}: STOW-RS refused {ds.SOPInstanceUID} ({ds.get('Modality', '')})")
    return failed


def predict_dicomweb(predictor: Predictor, url: str, *, study: str, series: str | None = None,
                     options: OutputOptions | None = None, redo: bool = False,
                     client: DICOMwebClient | None = None) -> DicomwebResult:
    """Predict the radiographs of ``study`` (only ``series`` when given) on ``url``; store the results there.

    ``url``: the DICOMweb root (e.g. ``http://orthanc:8042/dicom-web``). ``options``: which results
    (default: a SEG per image, empty masks included). An instance that cannot be read or whose
    results cannot be made is listed in ``failures`` and the rest goes on. PacsError when the
    server cannot be reached or refuses a request; DataError for invalid UIDs.
    """
    for what, uid in (("--study", study), ("--series", series)):
        if uid is not None and not is_valid_uid(uid):
            raise PacsError(f"{what} {uid[:80]!r} is not a DICOM UID (digits and dots, at most 64 characters)")
    options = options or OutputOptions()
    client = client or DICOMwebClient(url)
    result = DicomwebResult(url, study, series)
    listing = _call(f"QIDO-RS of study {study}", url,
                    lambda: client.search_for_instances(study_instance_uid=study, get_remaining=True))
    if not listing:
        raise PacsError(f"{url}: study {study} not found (no instances)")
    fingerprint = predictor_fingerprint(predictor)
    done = set() if redo else _done_sources(client, url, study, listing, fingerprint)
    todo: list[tuple[str, str]] = []
    for item in listing:
        item_series, uid = _value(item, _SERIES), _value(item, _SOP_INSTANCE)
        if series is not None and item_series != series:
            continue
        result.n_instances += 1
        if _value(item, _SOP_CLASS) not in INPUT_SOP_CLASSES:  # Secondary Captures: checked after WADO-RS
            result.n_not_predicted += 1
        elif uid in done:
            result.n_already_done += 1
        else:
            todo.append((item_series, uid))
    if series is not None and result.n_instances == 0:
        raise PacsError(f"{url}: series {series} not found in study {study}")
    for start in range(0, len(todo), predictor.batch_size):
        batch: list[tuple[Dataset, InputImage]] = []
        for item_series, uid in todo[start:start + predictor.batch_size]:
            try:
                fetched = _fetch(client, url, study, item_series, uid)
            except PacsError:
                raise
            except PneumosegError as exc:
                result.failures.append(str(exc))
                continue
            if isinstance(fetched, str):
                result.n_not_predicted += 1
            else:
                batch.append(fetched)
        if batch:
            _predict_and_store(predictor, client, url, study, batch, options, fingerprint, result)
    return result


def _predict_and_store(predictor: Predictor, client: DICOMwebClient, url: str, study: str,
                       batch: list[tuple[Dataset, InputImage]], options: OutputOptions, fingerprint: str,
                       result: DicomwebResult) -> None:
    preds: list[Prediction] = predictor.predict_batch([image for _, image in batch])
    datasets: list[Dataset] = []
    kinds: list[str] = []
    for (source, image), pred in zip(batch, preds, strict=True):
        try:
            outputs = make_outputs(predictor, image, pred, source, options, fingerprint)
        except PneumosegError as exc:
            result.failures.append(str(exc))
            continue
        result.n_predicted += 1
        result.n_positive += int(pred.area_px > 0)
        result.predictions.append((image.image_id, pred.probability, pred.area_px))
        datasets += outputs.values()
        kinds += outputs.keys()
    if not datasets:
        return
    failed = _store(client, url, study, datasets, result)
    for ds, kind in zip(datasets, kinds, strict=True):
        if str(ds.SOPInstanceUID) not in failed:
            result.stored[kind] += 1
