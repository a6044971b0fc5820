//! S3 and S3-compatible servers (MinIO, moto, …) through aws-sdk-s3.
//!
//! Uploads are staged on local disk first (to bound them, hash them and sniff them
//! before anything is stored), then put as one object streamed from that file. Objects
//! stay private: a download is a redirect to a presigned GET that expires after
//! `s3_presign_secs`.
//!
//! The content type and `Content-Disposition: attachment` are stored with the object
//! *and* named in the presigned URL (`response-content-*`): AWS honours the URL, but
//! some S3-compatible servers (moto among them) ignore it and answer with what was
//! stored. `X-Content-Type-Options: nosniff` cannot be set on S3 objects at all; the
//! attachment disposition is what keeps browsers from rendering a download inline.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_credential_types::Credentials;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use aws_sdk_s3::Client;
use base64::Engine;

use super::{valid_key, BlobStore, Fetched, ServeAs, StagedFile, UploadsConfig};

pub struct S3Blobs {
    client: Client,
    bucket: String,
    presign: Duration,
    staging: PathBuf,
}

impl S3Blobs {
    pub async fn open(
        config: &UploadsConfig,
        presign: Duration,
        staging: PathBuf,
    ) -> anyhow::Result<S3Blobs> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.s3_region.clone()));
        if let Some(endpoint) = &config.s3_endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        match (&config.s3_access_key_id, &config.s3_secret_access_key) {
            (Some(id), Some(secret)) => {
                loader = loader.credentials_provider(Credentials::new(
                    id,
                    secret,
                    None,
                    None,
                    "tidings-config",
                ));
            }
            (None, None) => {} // the AWS default chain: env, profile, web identity, IMDS…
            _ => anyhow::bail!(
                "set both uploads.s3_access_key_id and uploads.s3_secret_access_key, or neither"
            ),
        }
        let shared = loader.load().await;
        let s3_config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(config.s3_path_style)
            // Recent SDKs add CRC trailers (aws-chunked uploads) to every request, which
            // many S3-compatible servers do not speak. Integrity is covered anyway: each
            // put carries the SHA-256 computed while receiving, which S3 verifies.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        let blobs = S3Blobs {
            client: Client::from_conf(s3_config),
            bucket: config.s3_bucket.clone(),
            presign,
            staging,
        };
        blobs.ensure_bucket(&config.s3_region).await;
        Ok(blobs)
    }

    /// Creates the bucket when it does not exist, so a fresh MinIO or moto works out of
    /// the box. Never fatal: production credentials are often allowed to use a bucket
    /// but not to create (or even inspect) one, and a store that is down at start may be
    /// up by the first upload; each upload reports its own failure.
    async fn ensure_bucket(&self, region: &str) {
        let head = self.client.head_bucket().bucket(&self.bucket).send().await;
        match head {
            Ok(_) => return,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {}
            Err(e) => {
                tracing::warn!(bucket = %self.bucket, error = %DisplayErrorContext(&e),
                    "cannot check the upload bucket; uploads will fail until it is reachable");
                return;
            }
        }
        let mut create = self.client.create_bucket().bucket(&self.bucket);
        // us-east-1 is the default location and must not be named explicitly.
        if region != "us-east-1" {
            create = create.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region))
                    .build(),
            );
        }
        match create.send().await {
            Ok(_) => tracing::info!(bucket = %self.bucket, "created the upload bucket"),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_bucket_already_owned_by_you()) => {}
            Err(e) => tracing::warn!(bucket = %self.bucket, error = %DisplayErrorContext(&e),
                "cannot create the upload bucket; create it, or uploads will fail"),
        }
    }
}

#[async_trait]
impl BlobStore for S3Blobs {
    fn staging_dir(&self) -> &Path {
        &self.staging
    }

    async fn put(&self, key: &str, staged: StagedFile, serve: &ServeAs) -> anyhow::Result<()> {
        anyhow::ensure!(valid_key(key), "invalid storage key {key:?}");
        let digest = hex::decode(&staged.sha256).context("staged sha256 is not hex")?;
        let body = ByteStream::from_path(&*staged.path)
            .await
            .context("reading the staged upload")?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(&serve.content_type)
            .content_disposition(&serve.content_disposition)
            .content_length(i64::try_from(staged.size).context("upload size")?)
            .checksum_sha256(base64::engine::general_purpose::STANDARD.encode(digest))
            .body(body)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "putting s3://{}/{key}: {}",
                    self.bucket,
                    DisplayErrorContext(&e)
                )
            })?;
        // `staged` drops here, deleting the local copy.
        Ok(())
    }

    async fn fetch(&self, key: &str, serve: &ServeAs) -> anyhow::Result<Fetched> {
        anyhow::ensure!(valid_key(key), "invalid storage key {key:?}");
        let presigned = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .response_content_type(&serve.content_type)
            .response_content_disposition(&serve.content_disposition)
            .presigned(PresigningConfig::expires_in(self.presign)?)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "presigning s3://{}/{key}: {}",
                    self.bucket,
                    DisplayErrorContext(&e)
                )
            })?;
        Ok(Fetched::Redirect(presigned.uri().to_owned()))
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        anyhow::ensure!(valid_key(key), "invalid storage key {key:?}");
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "deleting s3://{}/{key}: {}",
                    self.bucket,
                    DisplayErrorContext(&e)
                )
            })?;
        Ok(())
    }
}
