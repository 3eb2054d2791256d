"""Prometheus metrics of the voice-conversion service (module-level, on the default registry the bootstrap exports).

Everything that depends on the voice is labelled by `model`, so a slow checkpoint stands out on a dashboard. The
per-RPC counters (grpc_server_*) come from the shared interceptor; these cover the worker pool and the audio.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RTF_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 8.0)

WORKERS = Gauge("rvc_pool_workers", "Worker threads in the conversion pool.")
QUEUE_CAPACITY = Gauge("rvc_pool_queue_capacity", "Waiting jobs beyond which new work is refused.")
QUEUE_DEPTH = Gauge("rvc_pool_queue_depth", "Conversion jobs waiting for a worker.", ["model"])
BUSY_WORKERS = Gauge("rvc_pool_busy_workers", "Workers running a conversion job now.", ["model"])
JOBS = Counter(
    "rvc_pool_jobs_total",
    "Conversion jobs by outcome: ok, error, cancelled (dropped or stopped), rejected (queue full).",
    ["model", "outcome"],
)
JOB_SECONDS = Histogram(
    "rvc_pool_job_seconds", "Time a worker spent on one job (queueing excluded).", ["model"], buckets=JOB_BUCKETS
)
QUEUE_WAIT_SECONDS = Histogram(
    "rvc_pool_queue_wait_seconds", "Time a job waited for a worker.", ["model"], buckets=JOB_BUCKETS
)
AUDIO_SECONDS = Counter("rvc_audio_converted_seconds_total", "Seconds of input audio converted.", ["model"])
REAL_TIME_FACTOR = Histogram(
    "rvc_real_time_factor",
    "Job time / audio duration per conversion job (below 1 is faster than real time).",
    ["model"],
    buckets=RTF_BUCKETS,
)
ACTIVE_STREAMS = Gauge("rvc_active_streams", "Convert streams open now.")

# Admission of Convert streams by real-time capacity (capacity.py). Cost classes are a model and its F0 method; both
# come from the registry and the contract's enum, so the label sets stay small.
STREAM_COST = Gauge(
    "rvc_stream_cost_ratio",
    "Estimated worker-seconds per second of audio for a Convert stream (EWMA of measured jobs).",
    ["model", "f0_method"],
)
ADMITTED_LOAD = Gauge(
    "rvc_admitted_load_workers", "Worker-seconds per second that the admitted Convert streams need at current costs."
)
ADMISSION_CAPACITY = Gauge(
    "rvc_admission_capacity_workers", "Workers x target utilization: the load up to which Convert streams are admitted."
)
ADMISSION_REFUSALS = Counter(
    "rvc_admission_refusals_total",
    "Convert streams refused with RESOURCE_EXHAUSTED because admitting them would push streams below real time.",
    ["model"],
)
