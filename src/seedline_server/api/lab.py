"""LabResultService over gRPC (and REST through Envoy).

Samples (create, get, list, destroy, void), the lab metric reference, lab results (create, get,
list, attach, two-step void, cancel void) and certificates of analysis (import by upload or URL,
download as ``google.api.HttpBody``).
"""

from __future__ import annotations

import json
import re
from datetime import UTC
from typing import Any

import grpc
from google.api import httpbody_pb2
from google.protobuf.message import Message
from seedline.lab.v1 import lab_pb2 as pb
from seedline.lab.v1 import lab_pb2_grpc

from seedline_server import documents
from seedline_server.api import names
from seedline_server.api.convert import call, parse_quantity, replay, signature, to_quantity, ts
from seedline_server.api.interceptor import annotate_violations
from seedline_server.config import Settings
from seedline_server.domain import lab as rules
from seedline_server.domain.errors import FieldViolation, ReferenceInvalid
from seedline_server.domain.quantity import Quantity, Unit, dimension_of
from seedline_server.service import lab
from seedline_server.service.context import ANONYMOUS, CallContext
from seedline_server.service.registry import etag
from seedline_server.service.uow import Database, UnitOfWork
from seedline_server.store import lab_models, reference

Ctx = grpc.aio.ServicerContext[Any, Any]
_METRIC_INDEX = re.compile(r"(?:^|\.)metrics\[(\d+)\]")
_EVERY_LICENSE = "licenses/-"
MAX_DOCUMENT_BYTES = 8 * 1024 * 1024  # the contract's limit for a certificate of analysis


def _metric_id(name: str) -> str:
    """The id of ``labMetrics/{id}`` (the contract's pattern already holds)."""
    return name.removeprefix("labMetrics/")


def _name_metrics(request: Message, found: list[FieldViolation]) -> list[FieldViolation]:
    """Name the lab metric in each violation under ``lab_result.metrics[i]``."""
    assert isinstance(request, pb.CreateLabResultRequest)
    metrics = request.lab_result.metrics
    out = []
    for v in found:
        match = _METRIC_INDEX.search(v.field)
        if match and int(match.group(1)) < len(metrics) and metrics[int(match.group(1))].lab_metric:
            v = FieldViolation(v.field, f"{metrics[int(match.group(1))].lab_metric}: {v.description}")
        out.append(v)
    return out


annotate_violations(pb.CreateLabResultRequest, _name_metrics)


def sample_pb(row: lab_models.Sample) -> pb.Sample:
    """Wire form of a sample."""
    lic = row.license_id
    return pb.Sample(
        name=lab.sample_name(lic, row.id),
        source_lot=f"licenses/{lic}/lots/{row.source_lot_id}",
        quantity=to_quantity(Quantity(row.quantity, dimension_of(Unit(row.unit)))),
        lab_license=f"licenses/{row.lab_license_id}",
        purpose=row.purpose,  # type: ignore[arg-type]
        requested_metric_types=row.requested_metric_types,  # type: ignore[arg-type]
        requested_metrics=[rules.metric_name(m) for m in row.requested_metrics],
        state_tag=row.state_tag,
        status=row.status,  # type: ignore[arg-type]
        lab_result=lab.result_name(lic, row.lab_result_id) if row.lab_result_id else "",
        close_note=row.close_note,
        close_time=ts(row.close_time),
        create_time=ts(row.create_time),
        update_time=ts(row.update_time),
        etag=etag(row.id, row.version),
    )


def result_pb(v: lab.ResultView) -> pb.LabResult:
    """Wire form of a lab result."""
    row = v.result
    lic = row.license_id
    out = pb.LabResult(
        name=lab.result_name(lic, row.id),
        lab_license=f"licenses/{row.lab_license_id}",
        sample=lab.sample_name(lic, row.sample_id) if row.sample_id else "",
        lots=[f"licenses/{lic}/lots/{i}" for i in v.lot_ids],
        metrics=[
            pb.LabResultMetric(
                lab_metric=rules.metric_name(m.metric_id),
                qom=m.qom,
                uom=m.uom,  # type: ignore[arg-type]
                lod=m.lod,
                loq=m.loq,
                limit=m.limit,
                status=m.status,  # type: ignore[arg-type]
            )
            for m in v.metrics
        ],
        status=row.status,  # type: ignore[arg-type]
        state=row.state,  # type: ignore[arg-type]
        test_time=ts(row.test_time),
        certificate_number=row.certificate_number,
        coa_sha256=row.coa_sha256,
        void_reason=row.void_reason,
        void_time=ts(row.void_time),
        create_time=ts(row.create_time),
        update_time=ts(row.update_time),
        etag=etag(row.id, row.version),
        panel=row.panel,
        missing_metrics=row.missing_metrics,
    )
    if row.void_confirmation:
        c = row.void_confirmation
        out.void_confirmation.signer = c.get("signer", "")
        out.void_confirmation.meaning = c.get("meaning", 0)
        out.void_confirmation.reason = c.get("reason", "")
        out.void_confirmation.sign_time.FromJsonString(c["sign_time"])
        out.void_confirmation.audit_event_id = c.get("audit_event_id", "")
    return out


def metric_pb(row: lab_models.LabMetric) -> pb.LabMetric:
    """Wire form of a reference lab metric."""
    return pb.LabMetric(
        name=rules.metric_name(row.id),
        display_name=row.display_name,
        type=row.type,  # type: ignore[arg-type]
        cas_number=row.cas_number,
        default_uom=row.default_uom,  # type: ignore[arg-type]
        metrc_name=row.metrc_name,
        biotrack_name=row.biotrack_name,
    )


def _parent(parent: str) -> str | None:
    """The license id of ``parent``, or None for ``licenses/-`` (every license)."""
    return None if parent == _EVERY_LICENSE else names.license_id(parent)


def _ref(parent_license: str | None, name: str, coll: str, field: str) -> str:
    """The id of an optional filter reference (of the parent's license unless ``licenses/-``)."""
    if not name:
        return ""
    if parent_license is None:
        return names.child(name, coll, field)[1]
    return names.same_license(parent_license, name, coll, field)


def _reported(m: pb.LabResultMetric) -> rules.Reported:
    return rules.Reported(
        metric_id=_metric_id(m.lab_metric),
        status=rules.MetricStatus(m.status),
        uom=rules.LabUnit(m.uom),
        qom=m.qom,
        lod=m.lod,
        loq=m.loq,
        limit=m.limit,
    )


class LabServicer(lab_pb2_grpc.LabResultServiceServicer):
    """Implements seedline.lab.v1.LabResultService."""

    def __init__(self, db: Database, panels: rules.Panels, fetch_policy: documents.FetchPolicy) -> None:
        self._db = db
        self._panels = panels
        self._fetch = fetch_policy

    # --- samples -------------------------------------------------------------------------------

    async def CreateSample(self, request: pb.CreateSampleRequest, context: Ctx) -> pb.Sample:
        license_id = names.license_id(request.parent)
        s = request.sample
        new = lab.NewSample(
            source_lot_id=names.same_license(license_id, s.source_lot, "lots", "sample.source_lot"),
            quantity=parse_quantity(s.quantity, "sample.quantity"),
            lab_license_id=names.license_id(s.lab_license, "sample.lab_license"),
            purpose=rules.SamplePurpose(s.purpose),
            requested_metric_types=tuple(s.requested_metric_types),
            requested_metrics=tuple(_metric_id(m) for m in s.requested_metrics),
            state_tag=s.state_tag,
        )

        async def run(uow: UnitOfWork) -> pb.Sample:
            return sample_pb(await lab.create_sample(uow, license_id, new))

        return await self._db.write(call(request.request_id), run, replay("CreateSample", request, pb.Sample))

    async def GetSample(self, request: pb.GetSampleRequest, context: Ctx) -> pb.Sample:
        license_id, sample_id = names.child(request.name, "samples")

        async def run(uow: UnitOfWork) -> pb.Sample:
            return sample_pb(await lab.get_sample(uow, license_id, sample_id))

        return await self._db.read(call(), run)

    async def ListSamples(self, request: pb.ListSamplesRequest, context: Ctx) -> pb.ListSamplesResponse:
        license_id = _parent(request.parent)
        flt = lab.SampleFilter(
            source_lot_id=_ref(license_id, request.source_lot, "lots", "source_lot"),
            lab_license_id=names.license_id(request.lab_license, "lab_license")
            if request.lab_license
            else "",
            status=request.status,
        )

        async def run(uow: UnitOfWork) -> pb.ListSamplesResponse:
            page = await lab.list_samples(uow, license_id, flt, request.page_size, request.page_token)
            return pb.ListSamplesResponse(
                samples=[sample_pb(r) for r in page.rows], next_page_token=page.next_page_token
            )

        return await self._db.read(call(), run)

    async def DestroySample(self, request: pb.DestroySampleRequest, context: Ctx) -> pb.Sample:
        license_id, sample_id = names.child(request.name, "samples")

        async def run(uow: UnitOfWork) -> pb.Sample:
            return sample_pb(await lab.destroy_sample(uow, license_id, sample_id, request.note, request.etag))

        return await self._db.write(
            call(request.request_id), run, replay("DestroySample", request, pb.Sample)
        )

    async def VoidSample(self, request: pb.VoidSampleRequest, context: Ctx) -> pb.Sample:
        license_id, sample_id = names.child(request.name, "samples")

        async def run(uow: UnitOfWork) -> pb.Sample:
            return sample_pb(await lab.void_sample(uow, license_id, sample_id, request.reason, request.etag))

        return await self._db.write(call(request.request_id), run, replay("VoidSample", request, pb.Sample))

    # --- reference ---------------------------------------------------------------------------

    async def ListLabMetrics(
        self, request: pb.ListLabMetricsRequest, context: Ctx
    ) -> pb.ListLabMetricsResponse:
        async def run(uow: UnitOfWork) -> pb.ListLabMetricsResponse:
            rows, token = await lab.list_metrics(uow, request.type, request.page_size, request.page_token)
            return pb.ListLabMetricsResponse(lab_metrics=[metric_pb(r) for r in rows], next_page_token=token)

        return await self._db.read(call(), run)

    # --- results -----------------------------------------------------------------------------

    async def CreateLabResult(self, request: pb.CreateLabResultRequest, context: Ctx) -> pb.LabResult:
        license_id = names.license_id(request.parent)
        r = request.lab_result
        new = lab.NewResult(
            lab_license_id=names.license_id(r.lab_license, "lab_result.lab_license"),
            metrics=tuple(_reported(m) for m in r.metrics),
            test_time=r.test_time.ToDatetime(tzinfo=UTC),
            sample_id=names.same_license(license_id, r.sample, "samples", "lab_result.sample")
            if r.sample
            else "",
            lot_ids=tuple(
                names.same_license(license_id, lot, "lots", f"lab_result.lots[{n}]")
                for n, lot in enumerate(r.lots)
            ),
            claimed=rules.ResultStatus(r.status) if r.status else None,
            certificate_number=r.certificate_number,
        )

        async def run(uow: UnitOfWork) -> pb.LabResult:
            return result_pb(await lab.create_result(uow, license_id, new, self._panels))

        return await self._db.write(
            call(request.request_id), run, replay("CreateLabResult", request, pb.LabResult)
        )

    async def GetLabResult(self, request: pb.GetLabResultRequest, context: Ctx) -> pb.LabResult:
        license_id, result_id = names.child(request.name, "labResults")

        async def run(uow: UnitOfWork) -> pb.LabResult:
            return result_pb(await lab.view(uow, await lab.get_result(uow, license_id, result_id)))

        return await self._db.read(call(), run)

    async def ListLabResults(
        self, request: pb.ListLabResultsRequest, context: Ctx
    ) -> pb.ListLabResultsResponse:
        license_id = _parent(request.parent)
        flt = lab.ResultFilter(
            lot_id=_ref(license_id, request.lot, "lots", "lot"),
            sample_id=_ref(license_id, request.sample, "samples", "sample"),
            lab_license_id=names.license_id(request.lab_license, "lab_license")
            if request.lab_license
            else "",
            state=request.state,
        )

        async def run(uow: UnitOfWork) -> pb.ListLabResultsResponse:
            found, token = await lab.list_results(uow, license_id, flt, request.page_size, request.page_token)
            return pb.ListLabResultsResponse(lab_results=[result_pb(v) for v in found], next_page_token=token)

        return await self._db.read(call(), run)

    async def AttachLabResult(self, request: pb.AttachLabResultRequest, context: Ctx) -> pb.LabResult:
        license_id, result_id = names.child(request.name, "labResults")
        lot_ids = []
        for n, lot in enumerate(request.lots):
            lot_license, lot_id = names.child(lot, "lots", f"lots[{n}]")
            if lot_license != license_id:
                raise ReferenceInvalid(
                    f"lot {lot} is not in the lab result's license licenses/{license_id}",
                    metadata={"lot": lot},
                )
            lot_ids.append(lot_id)

        async def run(uow: UnitOfWork) -> pb.LabResult:
            return result_pb(await lab.attach_result(uow, license_id, result_id, lot_ids, request.etag))

        return await self._db.write(
            call(request.request_id), run, replay("AttachLabResult", request, pb.LabResult)
        )

    async def VoidLabResult(self, request: pb.VoidLabResultRequest, context: Ctx) -> pb.LabResult:
        license_id, result_id = names.child(request.name, "labResults")
        if request.confirm:
            signed = await signature(request.esignature)

            async def confirm(uow: UnitOfWork) -> pb.LabResult:
                return result_pb(await lab.confirm_void(uow, license_id, result_id, signed, request.etag))

            return await self._db.write(
                call(request.request_id), confirm, replay("VoidLabResult", request, pb.LabResult)
            )

        async def ask(uow: UnitOfWork) -> pb.LabResult:
            return result_pb(await lab.request_void(uow, license_id, result_id, request.reason, request.etag))

        return await self._db.write(
            call(request.request_id), ask, replay("VoidLabResult", request, pb.LabResult)
        )

    async def CancelLabResultVoid(self, request: pb.CancelLabResultVoidRequest, context: Ctx) -> pb.LabResult:
        license_id, result_id = names.child(request.name, "labResults")

        async def run(uow: UnitOfWork) -> pb.LabResult:
            return result_pb(await lab.cancel_void(uow, license_id, result_id, request.etag))

        return await self._db.write(
            call(request.request_id), run, replay("CancelLabResultVoid", request, pb.LabResult)
        )

    # --- certificates ------------------------------------------------------------------------

    async def ImportCertificateOfAnalysis(
        self, request: pb.ImportCertificateOfAnalysisRequest, context: Ctx
    ) -> pb.ImportCertificateOfAnalysisResponse:
        license_id, result_id = names.child(request.name, "labResults")
        if request.WhichOneof("document") == "uri":
            # Fetched before the transaction: no row lock is held across the network.
            fetched = await documents.fetch(request.uri, self._fetch)
            doc = lab.Document(fetched.data, lab.PDF, fetched.url)
        else:
            doc = lab.Document(request.pdf, lab.PDF)

        async def run(uow: UnitOfWork) -> pb.ImportCertificateOfAnalysisResponse:
            digest, found = await lab.import_certificate(
                uow, license_id, result_id, doc, request.expected_sha256, request.etag
            )
            return pb.ImportCertificateOfAnalysisResponse(sha256=digest, lab_result=result_pb(found))

        return await self._db.write(
            call(request.request_id),
            run,
            replay("ImportCertificateOfAnalysis", request, pb.ImportCertificateOfAnalysisResponse),
        )

    async def GetCertificateOfAnalysis(
        self, request: pb.GetCertificateOfAnalysisRequest, context: Ctx
    ) -> httpbody_pb2.HttpBody:
        license_id, result_id = names.child(request.name, "labResults")

        async def run(uow: UnitOfWork) -> httpbody_pb2.HttpBody:
            doc = await lab.get_certificate(uow, license_id, result_id)
            return httpbody_pb2.HttpBody(content_type=doc.content_type, data=doc.content)

        return await self._db.read(call(), run)


def load_panels(settings: Settings) -> rules.Panels:
    """The lab testing panels: ``lab_panels_path``, else the ones shipped with the server.

    Raises:
        PanelError: the file cannot be read or breaks the format.

    """
    path = settings.lab_panels_path or reference.DEFAULT_LAB_PANELS
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise rules.PanelError(f"cannot read lab panels from {path}: {exc}") from exc
    return rules.load_panels(data, str(path))


async def build_servicer(settings: Settings, database: Database) -> LabServicer:
    """The servicer with its panels, checked against the (migrated) lab metric reference.

    Raises:
        PanelError: a panel names an unknown or superseded metric, or a unit it cannot be
            measured in; the server refuses to start rather than judge results wrongly.

    """
    panels = load_panels(settings)

    async def check(uow: UnitOfWork) -> None:
        await lab.check_panels(uow, panels)

    await database.read(CallContext(principal=ANONYMOUS, method="seedline.server.LoadLabPanels"), check)
    policy = documents.FetchPolicy(
        max_bytes=MAX_DOCUMENT_BYTES,
        timeout=settings.coa_fetch_timeout_seconds,
        allow_private=settings.coa_fetch_allow_private,
    )
    return LabServicer(database, panels, policy)
