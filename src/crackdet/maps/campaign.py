"""Campaign photos and outputs in a local folder or an S3 bucket (``s3://bucket/prefix/``).

Credentials and endpoint come the usual way: boto3 reads ``AWS_ACCESS_KEY_ID``/
``AWS_SECRET_ACCESS_KEY``/``AWS_PROFILE`` and the endpoint from ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``; ``MLFLOW_S3_ENDPOINT_URL`` (MLflow's variable) is used when neither is set.

:class:`CampaignWork` wraps the per-photo work (:class:`~crackdet.maps.mapping.PhotoWork`) for
any executor: a photo in S3 is downloaded into a scratch folder of the worker, outputs bound
for S3 are written there by the same writers and uploaded, the photo's JSON last, so the
bucket holds the same bytes a local run writes and the resume rule (a complete set has its JSON)
holds there too. Whatever goes wrong with one photo becomes its one-line error; the others go on.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from crackdet.core.errors import CrackdetError, first_line
from crackdet.data.images import IMAGE_SUFFIXES
from crackdet.maps.mapping import PhotoOutcome, PhotoWork
from crackdet.maps.outputs import PhotoFiles, PhotoSummary

S3 = "s3://"


def is_s3(location: str) -> bool:
    return location.startswith(S3)


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or ending in "/"

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        bucket, _, prefix = uri[len(S3) :].partition("/")
        if not bucket:
            raise CrackdetError(f"{uri}: no bucket named; write s3://bucket/prefix/")
        return cls(bucket, prefix if not prefix or prefix.endswith("/") else prefix + "/")

    def uri(self, key: str = "") -> str:
        return f"{S3}{self.bucket}/{key or self.prefix}"


def s3_client() -> Any:
    """A boto3 S3 client with short timeouts (a dead endpoint fails in seconds)."""
    # boto3 is the optional ray/team extra's, and ~0.3 s to import: only for s3:// locations.
    import boto3
    from botocore.config import Config

    endpoint = None
    if not (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")):
        endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None
    config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3})
    return boto3.client("s3", endpoint_url=endpoint, config=config)


def _s3_error(uri: str, exc: Exception, doing: str) -> CrackdetError:
    from botocore.exceptions import (  # optional: only for s3:// locations
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
    )

    if isinstance(exc, EndpointConnectionError):
        return CrackdetError(
            f"{uri}: S3 endpoint unreachable ({first_line(str(exc))}); check "
            "AWS_ENDPOINT_URL and that the store is up"
        )
    if isinstance(exc, NoCredentialsError):
        return CrackdetError(f"{uri}: no S3 credentials; set AWS_ACCESS_KEY_ID/AWS_PROFILE")
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket", "404"):
            return CrackdetError(f"{uri}: no such bucket; create it or check the name")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return CrackdetError(f"{uri}: S3 refuses {doing} ({code}); check the credentials")
    return CrackdetError(f"{uri}: S3 error {doing}: {first_line(str(exc))}")


def list_s3_photos(uri: str) -> tuple[list[str], list[str]]:
    """The photo URIs under ``uri`` (recursively, in key order) and the other keys there."""
    loc = S3Location.parse(uri)
    client = s3_client()
    photos, other = [], []
    try:
        client.head_bucket(Bucket=loc.bucket)
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=loc.bucket, Prefix=loc.prefix
        )
        for page in pages:
            for obj in page.get("Contents", []):
                key = obj["Key"]
                (photos if key.lower().endswith(IMAGE_SUFFIXES) else other).append(loc.uri(key))
    except Exception as exc:
        raise _s3_error(uri, exc, "listing photos") from None
    return photos, other


def check_writable_s3(uri: str) -> None:
    """Write and remove a probe object under ``uri``: one line when that is refused."""
    loc = S3Location.parse(uri)
    client = s3_client()
    key = f"{loc.prefix}.crackdet-write-probe"
    try:
        client.head_bucket(Bucket=loc.bucket)
        client.put_object(Bucket=loc.bucket, Key=key, Body=b"")
        client.delete_object(Bucket=loc.bucket, Key=key)
    except Exception as exc:
        raise _s3_error(uri, exc, "writing outputs") from None


def read_output_text(out: str, name: str) -> str:
    """The text of the output file ``name`` in ``out`` (a folder or an S3 prefix)."""
    if not is_s3(out):
        return (Path(out) / name).read_text(encoding="utf-8")
    loc = S3Location.parse(out)
    try:
        body = s3_client().get_object(Bucket=loc.bucket, Key=loc.prefix + name)["Body"]
        return body.read().decode("utf-8")
    except Exception as exc:
        raise _s3_error(loc.uri(loc.prefix + name), exc, "reading an output") from None


def upload_output(path: Path, out: str) -> None:
    """``path`` into the S3 prefix ``out``, under its own name."""
    loc = S3Location.parse(out)
    try:
        s3_client().upload_file(str(path), loc.bucket, loc.prefix + path.name)
    except Exception as exc:
        raise _s3_error(loc.uri(loc.prefix + path.name), exc, "writing outputs") from None


# What a worker needs to reach the store: forwarded from the driver to Ray's workers.
STORE_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "MLFLOW_S3_ENDPOINT_URL",
)


def photo_name(source: str) -> str:
    return source.rsplit("/", 1)[-1]


class CampaignWork:
    """The per-photo work of a campaign: (source, stem) → :class:`PhotoOutcome`, for a source
    that is a local path or an S3 URI and outputs in ``out`` (a folder or an S3 prefix)."""

    def __init__(self, inner: PhotoWork, out: str) -> None:
        self.inner, self.out = inner, out
        self._scratch: Path | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_scratch": None}

    def scratch(self) -> Path:
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="crackdet-campaign-"))
        return self._scratch

    def __call__(self, item: tuple[str, str]) -> PhotoOutcome:
        source, stem = item
        try:
            outcome = self._map(source, stem)
        except Exception as exc:  # one photo's failure, whatever it is, never stops the rest
            line = first_line(str(exc)) or type(exc).__name__
            error = line if line.startswith(source) else f"{source}: {line}"
            return PhotoOutcome(None, error=error, photo=photo_name(source))
        if outcome.summary is None and is_s3(source):  # name the object, not the scratch copy
            local = str(self.scratch() / stem / photo_name(source))
            return replace(outcome, error=outcome.error.replace(local, source))
        return outcome

    def _map(self, source: str, stem: str) -> PhotoOutcome:
        own = self.scratch() / stem
        try:
            if is_s3(source):
                own.mkdir(parents=True, exist_ok=True)
                local = own / photo_name(source)
                loc = S3Location.parse(source)
                key = source[len(S3) + len(loc.bucket) + 1 :]
                try:
                    s3_client().download_file(loc.bucket, key, str(local))
                except Exception as exc:
                    raise _s3_error(source, exc, "reading the photo") from None
            else:
                local = Path(source)
            if not is_s3(self.out):
                self.inner.out = Path(self.out)
                return self.inner((local, stem))
            folder = own / "out"
            folder.mkdir(parents=True, exist_ok=True)
            self.inner.out = folder
            files = PhotoFiles(folder, stem)
            self._fetch_outputs(files)
            outcome = self.inner((local, stem))
            if outcome.summary is not None and outcome.seconds is not None:
                self._upload_outputs(files)
            return outcome
        finally:
            shutil.rmtree(own, ignore_errors=True)

    def _fetch_outputs(self, files: PhotoFiles) -> None:
        """What deciding whether an earlier run's outputs of this photo can be kept needs: its
        JSON (``made_from``, compared by the mapping) and whether the other files are in the
        bucket, each stood in for by an empty file (only its presence is read). Downloading
        them would cost more than the check (a 12 MP photo's heatmap .npy is ~24 MB); a photo
        mapped again overwrites every stand-in before anything is uploaded."""
        loc = S3Location.parse(self.out)
        client = s3_client()
        from botocore.exceptions import ClientError  # optional: only for s3:// locations

        try:
            client.download_file(loc.bucket, loc.prefix + files.record.name, str(files.record))
            summary = PhotoSummary.from_dict(json.loads(files.record.read_text()))
            for path in files.expected(summary)[:-1]:  # what the JSON says exists; it is last
                client.head_object(Bucket=loc.bucket, Key=loc.prefix + path.name)
                path.touch()
        except (ClientError, ValueError, KeyError, TypeError, AttributeError):
            return  # missing or unreadable: the set is incomplete and the photo is mapped again

    def _upload_outputs(self, files: PhotoFiles) -> None:
        """The photo's files, JSON last: an interrupted upload leaves a set without its JSON."""
        loc = S3Location.parse(self.out)
        client = s3_client()
        client.delete_object(Bucket=loc.bucket, Key=loc.prefix + files.record.name)
        for path in files.all():  # the record is last in PhotoFiles.all()
            client.upload_file(str(path), loc.bucket, loc.prefix + path.name)
