"""gRPC servicers, glue only: validate and convert the request, one domain call, the reply.

The server is gRPC's asyncio server. Classify runs on its event loop (the batcher lives there);
every other method hands its blocking domain call to `blocking`, a thread pool, so the loop
never waits on SQLite, fsync or a training job.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc

from batch_jobs.aggregation import AssessorQuality
from postclf.v1 import postclf_pb2 as pb
from postclf.v1 import postclf_pb2_grpc as pb_grpc
from postclf_errors import InvalidInputError, TooLargeError
from server import convert
from server.config import LimitsConfig
from server.errors import grpc_errors
from server.service import PostService

DEFAULT_QUERY_LIMIT = 50
NO_DEADLINE_S = 1e8  # ~3 years
T = TypeVar("T")


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline as a `time.monotonic()` value (None when the client set none)."""
    remaining = context.time_remaining()  # grpc reports "no deadline" as a huge number
    if remaining is None or remaining > NO_DEADLINE_S:
        return None
    return time.monotonic() + remaining


class _Blocking:
    def __init__(self, blocking: Executor) -> None:
        self.blocking = blocking

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the blocking pool, awaited."""
        return await asyncio.get_running_loop().run_in_executor(self.blocking, fn, *args)


class PostClassifierServicer(pb_grpc.PostClassifierServicer, _Blocking):
    def __init__(self, service: PostService, limits: LimitsConfig, blocking: Executor) -> None:
        super().__init__(blocking)
        self.svc, self.limits = service, limits

    @grpc_errors
    async def Classify(
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyResponse:
        dims = self.svc.holder.require().dims
        ids, views = convert.posts_to_views(
            request.posts, dims, self.limits.max_posts_per_call, self.limits.max_abs_value
        )
        result = await self.svc.classify(ids, views, deadline_of(context), request.skip_pool)
        top_k = request.top_k or self.limits.default_top_k
        return convert.classify_response(
            ids, result.probs, result.head, result.model.classes, result.model.version, top_k
        )

    @grpc_errors
    async def SubmitLabels(
        self, request: pb.SubmitLabelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitLabelsResponse:
        rows = convert.labels_from_proto(request.labels, self.limits.max_labels_per_call)
        result = await self.run(self.svc.submit_labels, rows)
        return convert.submit_result_to_proto(result)

    @grpc_errors
    async def IngestPosts(
        self, request: pb.IngestPostsRequest, context: grpc.aio.ServicerContext
    ) -> pb.IngestPostsResponse:
        dims = self.svc.holder.require().dims
        ids, views = convert.posts_to_views(
            request.posts, dims, self.limits.max_posts_per_call, self.limits.max_abs_value
        )
        accepted, duplicates = await self.run(self.svc.ingest, ids, views)
        return pb.IngestPostsResponse(accepted=accepted, duplicates=duplicates)

    @grpc_errors
    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        info, serving = await self.run(self.svc.model_info, convert.check_version(request.version))
        return convert.model_info_to_proto(info, serving)


class AdminServicer(pb_grpc.AdminServicer, _Blocking):
    def __init__(self, service: PostService, blocking: Executor) -> None:
        super().__init__(blocking)
        self.svc = service

    @grpc_errors
    async def RunNightly(
        self, request: pb.RunNightlyRequest, context: grpc.aio.ServicerContext
    ) -> pb.RunNightlyResponse:
        report, version = await self.run(
            self.svc.run_nightly, request.dry_run, request.seed or None
        )
        return pb.RunNightlyResponse(
            report_json=convert.report_json(report), model_version=version or ""
        )

    @grpc_errors
    async def Retrain(
        self, request: pb.RetrainRequest, context: grpc.aio.ServicerContext
    ) -> pb.RetrainResponse:
        report, version = await self.run(self.svc.retrain, request.force)
        return pb.RetrainResponse(
            report_json=convert.report_json(report), model_version=version or ""
        )

    @grpc_errors
    async def ListQueries(
        self, request: pb.ListQueriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListQueriesResponse:
        if request.limit < 0:
            raise InvalidInputError("must be ≥ 0", "limit")
        if request.limit > 10_000:
            raise TooLargeError("limit is at most 10000")
        records = await self.run(self.svc.list_queries, request.limit or DEFAULT_QUERY_LIMIT)
        return pb.ListQueriesResponse(queries=[convert.query_to_proto(r) for r in records])

    @grpc_errors
    async def ListAssessors(
        self, request: pb.ListAssessorsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAssessorsResponse:
        quality, floor = await self.run(self.svc.assessors)
        return assessors_to_proto(quality, floor)


def assessors_to_proto(quality: list[AssessorQuality], floor: float) -> pb.ListAssessorsResponse:
    out = pb.ListAssessorsResponse(quality_floor=floor)
    for q in quality:
        msg = out.assessors.add(
            assessor_id=q.assessor_id,
            labels=q.labels,
            shared_labels=q.shared,
            control_answers=q.control_answers,
            excluded=q.excluded,
            reason=q.reason,
            confusion_json=json.dumps(q.confusion, sort_keys=True),
        )
        if q.control_accuracy is not None:
            msg.control_accuracy = q.control_accuracy
        if q.ds_accuracy is not None:
            msg.ds_accuracy = q.ds_accuracy
    return out
