#!/bin/sh
# One-shot set-up of MinIO for medgan, run by the `minio-init` service (minio/mc image) at every `up`.
# Idempotent: creates the bucket, a policy limited to that bucket, and the S3 user medgan's services use
# (MEDGAN_S3_ACCESS_KEY / MEDGAN_S3_SECRET_KEY), so the root credentials stay with the operator.
set -eu

: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}" "${MEDGAN_S3_ACCESS_KEY:?}" "${MEDGAN_S3_SECRET_KEY:?}"
BUCKET="${MEDGAN_S3_BUCKET:-medgan}"
ENDPOINT="${MINIO_ENDPOINT:-http://minio:9000}"
POLICY="medgan-${BUCKET}-rw"
TMP="${TMPDIR:-/tmp}"

mc alias set medgan "$ENDPOINT" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "medgan/$BUCKET"

cat >"$TMP/policy.json" <<EOF
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow",
     "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
     "Resource": ["arn:aws:s3:::${BUCKET}"]},
    {"Effect": "Allow",
     "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                "s3:ListMultipartUploadParts", "s3:GetObjectTagging", "s3:PutObjectTagging"],
     "Resource": ["arn:aws:s3:::${BUCKET}/*"]}
  ]
}
EOF
mc admin policy create medgan "$POLICY" "$TMP/policy.json"

# `user add` on an existing user updates its secret, so rotating MEDGAN_S3_SECRET_KEY is: edit .env, `up -d`.
mc admin user add medgan "$MEDGAN_S3_ACCESS_KEY" "$MEDGAN_S3_SECRET_KEY"
# `policy attach` fails when the policy is attached already; that case is fine.
if ! mc admin policy attach medgan "$POLICY" --user "$MEDGAN_S3_ACCESS_KEY" 2>"$TMP/attach.err"; then
    # (no grep in the mc image: match with the shell)
    case "$(mc admin user info medgan "$MEDGAN_S3_ACCESS_KEY")" in
        *"$POLICY"*) ;;
        *) cat "$TMP/attach.err" >&2; exit 1 ;;
    esac
fi
echo "minio-init: bucket '$BUCKET' ready for user '$MEDGAN_S3_ACCESS_KEY'"
