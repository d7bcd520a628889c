"""store/blobs.py: processes that start at once may both find the bucket missing; the second create is not an error."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from store.blobs import S3BlobStore


class _Client:
    def __init__(self, create_error: str | None) -> None:
        self.create_error, self.created = create_error, 0

    def head_bucket(self, Bucket: str) -> None:  # noqa: N803 - boto3's parameter name
        raise ClientError({"Error": {"Code": "404", "Message": "Not Found"}}, "HeadBucket")

    def create_bucket(self, Bucket: str) -> None:  # noqa: N803
        self.created += 1
        if self.create_error:
            raise ClientError({"Error": {"Code": self.create_error, "Message": "..."}}, "CreateBucket")


def _store(client: _Client) -> S3BlobStore:
    store = S3BlobStore.__new__(S3BlobStore)
    store.bucket, store.client = "b", client
    return store


def test_a_bucket_another_process_just_created_is_fine() -> None:
    client = _Client("BucketAlreadyOwnedByYou")
    _store(client).ensure_bucket()
    assert client.created == 1


def test_a_bucket_that_belongs_to_someone_else_is_still_an_error() -> None:
    with pytest.raises(ClientError):
        _store(_Client("BucketAlreadyExists")).ensure_bucket()
    with pytest.raises(ClientError):
        _store(_Client("AccessDenied")).ensure_bucket()
