#!/bin/sh
# Create the runs bucket and a user that may use only that bucket, on a MinIO whose root
# credentials are in MINIO_ROOT_USER / MINIO_ROOT_PASSWORD. sqz gets the bucket user's keys
# (SQZ_ACCESS_KEY_ID / SQZ_SECRET_ACCESS_KEY), never root's. Safe to run again: every step
# leaves the same state whether or not it ran before. Used by the Kubernetes Job
# (create-bucket-job.yaml) and by docker-compose.yml's minio-init service.
set -eu
: "${MINIO_URL:?}" "${BUCKET:?}" "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}"
: "${SQZ_ACCESS_KEY_ID:?}" "${SQZ_SECRET_ACCESS_KEY:?}"
export HOME="${HOME:-/tmp}"  # mc keeps its config under $HOME/.mc

# The server may still be starting (on Kubernetes nothing orders this Job after it): retry
# for up to 3 minutes, then fail with the reason.
tries=0
until mc alias set minio "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 60 ]; then
    echo "MinIO at $MINIO_URL did not accept the root credentials within 3 minutes" >&2
    exit 1
  fi
  sleep 3
done
mc mb --ignore-existing "minio/$BUCKET"

# s3:* but only on this bucket and its objects: Ray Train's checkpoint uploads, pyarrow's
# multipart writes and sqz's listing all stay inside it, and nothing else is reachable.
policy_file="$(mktemp)"
cat >"$policy_file" <<POLICY
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": ["s3:*"], "Resource": ["arn:aws:s3:::$BUCKET", "arn:aws:s3:::$BUCKET/*"]}
  ]
}
POLICY
mc admin policy create minio "$BUCKET-readwrite" "$policy_file"
mc admin user add minio "$SQZ_ACCESS_KEY_ID" "$SQZ_SECRET_ACCESS_KEY" >/dev/null
# attach fails when the policy is already attached; detaching first makes a rerun a no-op.
mc admin policy detach minio "$BUCKET-readwrite" --user "$SQZ_ACCESS_KEY_ID" >/dev/null 2>&1 || true
mc admin policy attach minio "$BUCKET-readwrite" --user "$SQZ_ACCESS_KEY_ID"
echo "bucket $BUCKET ready; the sqz user may read and write it and nothing else"
