"""Links an operator can click in the Prefect UI: presigned S3 URLs (boto3) in one
"files" card per run, grouped by kind; nothing secret in them."""

from __future__ import annotations

import re
import urllib.parse
import urllib.request

import pytest

from flows.artifacts import files_markdown, link_expiry_s
from sqz import metrics, storage


@pytest.mark.integration
def test_presigned_link_fetches_the_object_and_holds_no_secret(s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-links-7f3a9c")
    url = f"{s3_bucket}/runs/r1/models/x.sqz"
    storage.write_bytes(url, b"SQZ bytes")
    link = storage.presigned_url(url, expires_s=3600)
    query = urllib.parse.parse_qs(urllib.parse.urlparse(link).query)
    assert link.startswith("http://127.0.0.1:") and query["X-Amz-Expires"] == ["3600"]
    assert "not-for-links-7f3a9c" not in link and "X-Amz-Signature" in query
    assert urllib.request.urlopen(link, timeout=10).read() == b"SQZ bytes"  # a browser's GET, no credentials


@pytest.mark.integration
def test_files_card_groups_a_runs_files_by_kind_with_one_line_per_table(s3_bucket):
    run_url = f"{s3_bucket}/runs/r2"
    storage.write_bytes(f"{run_url}/models/baseline.safetensors", b"w" * 2048)
    storage.write_bytes(f"{run_url}/models/density0.33-b6.sqz", b"s" * 300)
    storage.write_bytes(f"{run_url}/report/report.md", b"# r2\n")
    row = {"run_id": "r2", "lr": 1e-3, "loss": 1.0, "top1": 90.0, "top5": 99.0, "images_per_s": 10.0,
           "data_wait_s": 0.0, "wall_s": 1.0}  # fmt: skip
    for epoch in range(3):
        metrics.write_rows(run_url, "train_epochs", [{**row, "epoch": epoch}], writer_id=f"epoch-{epoch:04d}")
    text = files_markdown(run_url, expires_s=600)
    sections = re.findall(r"^## (.+)$", text, flags=re.M)
    assert sections == ["Report", "Models", "Metrics tables (Parquet)"]
    (epochs_line,) = [line for line in text.splitlines() if "`train_epochs`" in line]
    assert "3 file(s)" in epochs_line and len(re.findall(r"\]\(http", epochs_line)) == 3
    links = re.findall(r"\]\((http[^)]+)\)", text)
    assert len(links) == 6 and all("X-Amz-Expires=600" in link for link in links)
    assert "models/density0.33-b6.sqz" in text and "(300 B)" in text and "(2.0 KB)" in text


def test_local_runs_link_files_and_bad_expiry_is_refused(tmp_path, monkeypatch):
    storage.write_bytes(str(tmp_path / "run" / "report" / "report.md"), b"# r\n")
    assert f"(file://{tmp_path}/run/report/report.md)" in files_markdown(str(tmp_path / "run"))
    monkeypatch.setenv("SQZ_LINK_EXPIRY_S", "3600")
    assert link_expiry_s() == 3600
    monkeypatch.setenv("SQZ_LINK_EXPIRY_S", "30 days")
    with pytest.raises(ValueError, match="^SQZ_LINK_EXPIRY_S: must be a whole number of seconds"):
        link_expiry_s()
    with pytest.raises(ValueError, match=r"^link expiry: must be 1\.\.604800 seconds"):
        storage.presigned_url("s3://b/k", expires_s=604801)
