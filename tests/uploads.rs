//! Uploads and attachments end to end: the real binary, real HTTP, real MQTT, on SQLite
//! with local files and on PostgreSQL with S3 (moto, which scripts/test.sh starts and
//! names in TIDINGS_TEST_S3_ENDPOINT).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::mqtt::Mqtt;
use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    SqliteLocal,
    PostgresS3,
}

fn s3_endpoint() -> String {
    std::env::var("TIDINGS_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "TIDINGS_TEST_S3_ENDPOINT is not set: run the tests with scripts/test.sh, which \
             starts an S3-compatible server (moto)"
        )
    })
}

fn options(setup: Setup, extra: &[(&str, &str)]) -> Options {
    let mut opts = match setup {
        Setup::SqliteLocal => Options::new(Db::Sqlite),
        Setup::PostgresS3 => {
            let mut o = Options::new(Db::Postgres);
            // A bucket of its own per server: the server creates it at start.
            let bucket = format!("tidings-{}", ulid::Ulid::new().to_string().to_lowercase());
            for (k, v) in [
                ("TIDINGS_UPLOADS_BACKEND", "s3".to_owned()),
                ("TIDINGS_UPLOADS_S3_ENDPOINT", s3_endpoint()),
                ("TIDINGS_UPLOADS_S3_BUCKET", bucket),
                ("TIDINGS_UPLOADS_S3_REGION", "us-east-1".to_owned()),
                ("TIDINGS_UPLOADS_S3_ACCESS_KEY_ID", "test".to_owned()),
                ("TIDINGS_UPLOADS_S3_SECRET_ACCESS_KEY", "test".to_owned()),
            ] {
                o.env.push((k.to_owned(), v));
            }
            o
        }
    };
    for (k, v) in extra {
        opts.env.push(((*k).to_owned(), (*v).to_owned()));
    }
    opts
}

// --- test files ---------------------------------------------------------------------

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A real, valid 1×1 RGBA PNG (an uncompressed deflate block inside zlib).
fn png() -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    png_chunk(&mut out, b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 6, 0, 0, 0]);
    let scanline = [0u8, 0x12, 0x34, 0x56, 0xFF]; // filter 0, one pixel
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &scanline {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    let mut zlib = vec![0x78, 0x01, 0x01, 0x05, 0x00, 0xFA, 0xFF];
    zlib.extend_from_slice(&scanline);
    zlib.extend_from_slice(&((b << 16) | a).to_be_bytes());
    png_chunk(&mut out, b"IDAT", &zlib);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// An Ogg page carrying an `OpusHead`, then some "audio": what a voice recorder emits.
fn voice_note() -> Vec<u8> {
    let mut out = b"OggS\x00\x02".to_vec();
    out.extend_from_slice(&[0; 8]); // granule position
    out.extend_from_slice(&0x1234_5678u32.to_le_bytes()); // stream serial
    out.extend_from_slice(&[0; 4]); // page sequence
    out.extend_from_slice(&[0; 4]); // checksum (not checked by sniffing)
    out.extend_from_slice(&[1, 19]); // one segment of 19 bytes
    out.extend_from_slice(b"OpusHead\x01\x01\x38\x01\x80\xbb\x00\x00\x00\x00\x00");
    out.extend((0..3000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    out
}

fn pdf() -> Vec<u8> {
    b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n\
      2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
        .to_vec()
}

/// An MP4 (`ftyp isom`) of `len` bytes: big enough to take many reads on every hop.
fn video(len: usize) -> Vec<u8> {
    let mut out = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41".to_vec();
    let mut x = 0x9E37_79B9u32;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

// --- HTTP helpers -------------------------------------------------------------------

async fn upload(
    server: &Server,
    who: &Account,
    bytes: Vec<u8>,
    content_type: &str,
    filename: Option<&str>,
) -> reqwest::Response {
    let mut req = client()
        .post(server.url("/v1/uploads"))
        .bearer_auth(&who.access)
        .header("content-type", content_type)
        .body(bytes);
    if let Some(name) = filename {
        req = req.query(&[("filename", name)]);
    }
    req.send().await.expect("upload request")
}

/// Uploads and asserts 201 with the right size, hash and type; returns the body.
async fn upload_ok(
    server: &Server,
    who: &Account,
    bytes: &[u8],
    content_type: &str,
    filename: Option<&str>,
    mime: &str,
) -> Value {
    let res = upload(server, who, bytes.to_vec(), content_type, filename).await;
    assert_eq!(res.status(), 201, "upload {content_type}");
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["size"], bytes.len() as u64, "{body}");
    assert_eq!(body["sha256"], sha256_hex(bytes), "{body}");
    assert_eq!(body["mime"], mime, "{body}");
    assert!(
        body["id"].as_str().is_some_and(|id| id.len() == 26),
        "{body}"
    );
    body
}

/// A download as the client sees it after following the storage's redirect, if any.
struct Download {
    status: u16,
    headers: reqwest::header::HeaderMap,
    bytes: Vec<u8>,
    redirected: bool,
}

impl Download {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn download(server: &Server, who: &Account, id: &str) -> Download {
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let res = no_redirects
        .get(server.url(&format!("/v1/attachments/{id}")))
        .bearer_auth(&who.access)
        .send()
        .await
        .expect("download");
    if res.status() == 302 {
        assert_eq!(res.headers()["cache-control"], "no-store");
        let location = res.headers()["location"]
            .to_str()
            .expect("location")
            .to_owned();
        assert!(
            location.starts_with(&s3_endpoint()),
            "redirect to the object store: {location}"
        );
        // The presigned URL is the whole credential: no bearer token is sent there.
        let res = client().get(&location).send().await.expect("presigned GET");
        return Download {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            bytes: res.bytes().await.expect("bytes").to_vec(),
            redirected: true,
        };
    }
    Download {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        bytes: res.bytes().await.expect("bytes").to_vec(),
        redirected: false,
    }
}

/// Asserts `who` receives exactly `expected`, with safe headers.
async fn download_ok(
    server: &Server,
    setup: Setup,
    who: &Account,
    id: &str,
    expected: &[u8],
) -> Download {
    let got = download(server, who, id).await;
    assert_eq!(got.status, 200, "download {id} as {}", who.username);
    assert_eq!(got.bytes, expected, "byte-identical download");
    assert_eq!(got.redirected, setup == Setup::PostgresS3);
    // Raster images a browser renders itself are shown in place; anything else is a
    // download.
    let inline = ["image/jpeg", "image/png", "image/gif", "image/webp"]
        .contains(&got.header("content-type"));
    let expected_disposition = if inline {
        "inline; filename=\""
    } else {
        "attachment; filename=\""
    };
    assert!(
        got.header("content-disposition")
            .starts_with(expected_disposition),
        "{:?}",
        got.headers
    );
    if setup == Setup::SqliteLocal {
        assert_eq!(got.header("x-content-type-options"), "nosniff");
        assert_eq!(got.header("content-length"), expected.len().to_string());
    }
    got
}

async fn expect_hidden(server: &Server, who: &Account, id: &str) {
    let res = client()
        .get(server.url(&format!("/v1/attachments/{id}")))
        .bearer_auth(&who.access)
        .send()
        .await
        .expect("download");
    expect_error(res, 404, "not_found").await;
}

/// An upload with `Transfer-Encoding: chunked` over a raw socket: no Content-Length,
/// so only the server's counting can stop it. Returns the status and the body.
async fn chunked_upload(
    server: &Server,
    who: &Account,
    content_type: &str,
    chunk: &[u8],
    count: usize,
) -> (u16, Value) {
    let addr = server.http.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "POST /v1/uploads HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        who.access
    );
    let chunk = chunk.to_vec();
    // The server may answer (and close) before the body is over: write in the
    // background and read the answer meanwhile.
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await?;
        for _ in 0..count {
            write
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            write.write_all(&chunk).await?;
            write.write_all(b"\r\n").await?;
        }
        write.write_all(b"0\r\n\r\n").await?;
        Ok::<_, std::io::Error>(write)
    });
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), read.read_to_end(&mut response)).await;
    drop(writer.await);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // The JSON may itself be chunked: take the outermost object.
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if b > a => serde_json::from_str(&body[a..=b]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (status, json)
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn staging_is_empty(server: &Server) {
    let left = files_under(&server.data_path("uploads/.incoming"));
    assert!(left.is_empty(), "staging files left behind: {left:?}");
}

fn send_with(id: &str, conv: &str, attachment: &str) -> Value {
    json!({ "op": "send", "id": id, "conv": conv, "body": "", "attachment": attachment })
}

// --- scenarios ----------------------------------------------------------------------

/// Upload, share through a message, download as a member; hidden from everyone else.
async fn share_through_a_message(setup: Setup) {
    let server = Server::start_with(options(setup, &[])).await;
    let (alice, bob, eve) = (
        register(&server, "alice").await,
        register(&server, "bob").await,
        register(&server, "eve").await,
    );
    let conv = conversation(&server, &alice, "direct", &[&bob]).await;

    let image = png();
    let up = upload_ok(
        &server,
        &alice,
        &image,
        "image/png",
        Some("cat.png"),
        "image/png",
    )
    .await;
    assert_eq!(up["name"], "cat.png");
    let id = up["id"].as_str().unwrap().to_owned();

    // The uploader can fetch it before sending it; nobody else can yet.
    let got = download_ok(&server, setup, &alice, &id, &image).await;
    assert_eq!(got.header("content-type"), "image/png");
    assert!(
        got.header("content-disposition")
            .contains("filename=\"cat.png\""),
        "{:?}",
        got.headers
    );
    expect_hidden(&server, &bob, &id).await;
    expect_hidden(&server, &eve, &id).await;

    let mut a = Mqtt::connect(&server, &alice, "test").await;
    a.subscribe(&format!("u/{}/in", alice.id)).await;
    let mut b = Mqtt::connect(&server, &bob, "test").await;
    b.subscribe(&format!("u/{}/in", bob.id)).await;
    a.publish_json(&format!("u/{}/out", alice.id), &send_with("m1", &conv, &id))
        .await;
    let ack = a
        .expect(&format!("u/{}/in", alice.id), "reply to m1", |v| {
            v["re"] == "m1"
        })
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let msg = b
        .expect(&format!("u/{}/in", bob.id), "the message", |v| {
            v["type"] == "message"
        })
        .await;
    assert_eq!(msg["kind"], "image", "{msg}");
    assert_eq!(msg["attachment"]["id"], id.as_str(), "{msg}");
    assert_eq!(msg["attachment"]["size"], image.len() as u64, "{msg}");
    assert_eq!(msg["attachment"]["name"], "cat.png", "{msg}");

    // Bob, a member, downloads the very bytes; eve still gets the unknown-id answer.
    download_ok(&server, setup, &bob, &id, &image).await;
    expect_hidden(&server, &eve, &id).await;
    expect_hidden(&server, &eve, "01ARZ3NDEKTSV4RRFFQ69G5FAV").await;
    expect_hidden(&server, &bob, "not-an-id").await;

    // A voice note and a document travel the same way, with their own kinds.
    let voice = voice_note();
    let up = upload_ok(
        &server,
        &alice,
        &voice,
        "audio/ogg; codecs=opus",
        None,
        "audio/ogg",
    )
    .await;
    let voice_id = up["id"].as_str().unwrap().to_owned();
    assert!(up.get("name").is_none(), "{up}");
    let doc = pdf();
    let up = upload_ok(
        &server,
        &alice,
        &doc,
        "application/pdf",
        Some("minutes.pdf"),
        "application/pdf",
    )
    .await;
    let doc_id = up["id"].as_str().unwrap().to_owned();
    a.publish_json(
        &format!("u/{}/out", alice.id),
        &send_with("m2", &conv, &voice_id),
    )
    .await;
    a.publish_json(
        &format!("u/{}/out", alice.id),
        &send_with("m3", &conv, &doc_id),
    )
    .await;
    let voice_msg = b
        .expect(&format!("u/{}/in", bob.id), "the voice note", |v| {
            v["type"] == "message" && v["attachment"]["id"] == voice_id.as_str()
        })
        .await;
    assert_eq!(voice_msg["kind"], "voice");
    let doc_msg = b
        .expect(&format!("u/{}/in", bob.id), "the document", |v| {
            v["type"] == "message" && v["attachment"]["id"] == doc_id.as_str()
        })
        .await;
    assert_eq!(doc_msg["kind"], "file");
    let got = download_ok(&server, setup, &bob, &voice_id, &voice).await;
    assert_eq!(got.header("content-type"), "audio/ogg");
    assert!(
        got.header("content-disposition")
            .contains(&format!("{voice_id}.ogg")),
        "an unnamed upload is named after its id: {:?}",
        got.headers
    );
    download_ok(&server, setup, &bob, &doc_id, &doc).await;
    expect_hidden(&server, &eve, &doc_id).await;

    // A few megabytes of video, shared like the rest.
    let clip = video(3 * 1024 * 1024 + 17);
    let up = upload_ok(
        &server,
        &alice,
        &clip,
        "video/mp4",
        Some("clip.mp4"),
        "video/mp4",
    )
    .await;
    let clip_id = up["id"].as_str().unwrap().to_owned();
    a.publish_json(
        &format!("u/{}/out", alice.id),
        &send_with("m4", &conv, &clip_id),
    )
    .await;
    b.expect(&format!("u/{}/in", bob.id), "the video", |v| {
        v["type"] == "message" && v["attachment"]["id"] == clip_id.as_str()
    })
    .await;
    download_ok(&server, setup, &bob, &clip_id, &clip).await;

    // Streamed without a Content-Length, in many chunks, the count and hash still hold.
    let chunk = voice_note();
    let (status, body) = chunked_upload(&server, &alice, "audio/ogg", &chunk, 20).await;
    assert_eq!(status, 201, "{body}");
    let whole = chunk.repeat(20);
    assert_eq!(body["size"], whole.len() as u64);
    assert_eq!(body["sha256"], sha256_hex(&whole));
    download_ok(&server, setup, &alice, body["id"].as_str().unwrap(), &whole).await;
    staging_is_empty(&server);
}

/// Everything an upload can be refused for, each with its status and code, and no
/// file left behind.
async fn refusals(setup: Setup) {
    let server = Server::start_with(options(setup, &[("TIDINGS_UPLOADS_MAX_BYTES", "4096")])).await;
    let alice = register(&server, "alice").await;

    // Over the limit: declared up front, or found out while streaming.
    let res = upload(&server, &alice, vec![b'a'; 4097], "text/plain", None).await;
    expect_error(res, 413, "too_large").await;
    let (status, body) = chunked_upload(&server, &alice, "image/png", &png(), 200).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "too_large", "{body}");
    // Exactly at the limit is fine.
    let text = "a".repeat(4096).into_bytes();
    upload_ok(&server, &alice, &text, "text/plain", None, "text/plain").await;

    // Disallowed types, whatever they are declared as.
    let mut elf =
        b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x3e\x00".to_vec();
    elf.resize(512, 0);
    let random: Vec<u8> = (0..1024u32)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 13) as u8)
        .collect();
    for (bytes, declared) in [
        (elf, "image/png"),
        (random.clone(), "image/png"),
        (random, "application/octet-stream"),
        (
            b"<html><script>alert(1)</script></html>".to_vec(),
            "text/plain",
        ),
        (
            b"PK\x03\x04\x14\x00\x00\x00\x08\x00archive".to_vec(),
            "application/zip",
        ),
        (b"caf\xe9 au lait".to_vec(), "text/plain"), // Latin-1, not UTF-8
        (b"plain words".to_vec(), "application/pdf"),
    ] {
        let res = upload(&server, &alice, bytes, declared, None).await;
        expect_error(res, 415, "unsupported_type").await;
    }

    // Empty.
    let res = upload(&server, &alice, Vec::new(), "image/png", None).await;
    expect_error(res, 422, "empty").await;

    // Text is accepted when it is UTF-8 and declared as text, and served as UTF-8.
    let csv = "name,city\nZoë,Zürich\n".as_bytes();
    let up = upload_ok(
        &server,
        &alice,
        csv,
        "text/csv",
        Some("people.csv"),
        "text/csv",
    )
    .await;
    let got = download_ok(&server, setup, &alice, up["id"].as_str().unwrap(), csv).await;
    assert_eq!(got.header("content-type"), "text/csv; charset=utf-8");

    // A hostile name is only a display name: cleaned, and never a path.
    let up = upload_ok(
        &server,
        &alice,
        &png(),
        "image/png",
        Some("../../etc/passwd"),
        "image/png",
    )
    .await;
    assert_eq!(up["name"], "passwd");
    let id = up["id"].as_str().unwrap();
    let got = download_ok(&server, setup, &alice, id, &png()).await;
    assert!(
        got.header("content-disposition")
            .contains("filename=\"passwd\""),
        "{:?}",
        got.headers
    );
    let up = upload_ok(
        &server,
        &alice,
        &png(),
        "image/png",
        Some("a\r\nX-Injected: 1\"\u{202E}gnp.exe"),
        "image/png",
    )
    .await;
    assert_eq!(up["name"], "aX-Injected: 1\"gnp.exe");
    let got = download_ok(&server, setup, &alice, up["id"].as_str().unwrap(), &png()).await;
    assert!(got.headers.get("x-injected").is_none());
    let long = "x".repeat(1000);
    let up = upload_ok(
        &server,
        &alice,
        &png(),
        "image/png",
        Some(&long),
        "image/png",
    )
    .await;
    assert_eq!(up["name"].as_str().unwrap().len(), 255);

    let root = server.data_dir.parent().expect("data dir has a parent");
    let files = files_under(root);
    assert!(
        files
            .iter()
            .all(|f| f.file_name().is_none_or(|n| n != "passwd")),
        "{files:?}"
    );
    let uploads = server.data_path("uploads");
    let stored: Vec<&PathBuf> = files.iter().filter(|f| f.starts_with(&uploads)).collect();
    for f in &stored {
        let rel = f.strip_prefix(&uploads).unwrap();
        let parts: Vec<_> = rel.components().collect();
        assert_eq!(parts.len(), 2, "stored as {{uploader}}/{{id}}: {rel:?}");
        assert!(rel.starts_with(&alice.id), "{rel:?}");
    }
    match setup {
        // The accepted uploads are all local files…
        Setup::SqliteLocal => assert_eq!(stored.len(), 5, "{stored:?}"),
        // …or all objects in the bucket, with nothing kept on disk.
        Setup::PostgresS3 => assert!(stored.is_empty(), "{stored:?}"),
    }
    staging_is_empty(&server);

    // Without a valid token nothing is read or stored.
    let res = client()
        .post(server.url("/v1/uploads"))
        .header("content-type", "image/png")
        .body(png())
        .send()
        .await
        .expect("upload");
    expect_error(res, 401, "unauthorized").await;
    let res = client()
        .post(server.url("/v1/uploads"))
        .bearer_auth("not-a-token")
        .header("content-type", "image/png")
        .body(png())
        .send()
        .await
        .expect("upload");
    expect_error(res, 401, "invalid_token").await;
    let res = client()
        .get(server.url(&format!("/v1/attachments/{id}")))
        .send()
        .await
        .expect("download");
    expect_error(res, 401, "unauthorized").await;
}

/// Per-user quotas: files per hour (429 with Retry-After), bytes per day (413 for an
/// upload larger than what is left, declared or streamed; 429 once nothing is left).
async fn quotas(setup: Setup) {
    let server = Server::start_with(options(
        setup,
        &[
            ("TIDINGS_UPLOADS_MAX_FILES_PER_HOUR", "4"),
            ("TIDINGS_UPLOADS_MAX_BYTES_PER_DAY", "3000"),
        ],
    ))
    .await;
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let carol = register(&server, "carol").await;

    upload_ok(
        &server,
        &alice,
        &video(1000),
        "video/mp4",
        None,
        "video/mp4",
    )
    .await;
    upload_ok(
        &server,
        &alice,
        &video(1000),
        "video/mp4",
        None,
        "video/mp4",
    )
    .await;
    let res = upload(&server, &alice, video(1500), "video/mp4", None).await;
    expect_error(res, 413, "upload_quota").await;
    // Without a Content-Length only the count stops it, with the same answer.
    let (status, body) = chunked_upload(&server, &alice, "video/mp4", &video(500), 3).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("upload_quota")),
        "{body}"
    );
    // Exactly what is left fits; then nothing is left.
    upload_ok(
        &server,
        &alice,
        &video(1000),
        "video/mp4",
        None,
        "video/mp4",
    )
    .await;
    let res = upload(&server, &alice, video(100), "video/mp4", None).await;
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry), "retry in {retry} s");
    expect_error(res, 429, "upload_quota").await;

    // Files per hour, whatever their size.
    for _ in 0..4 {
        upload_ok(
            &server,
            &bob,
            &pdf(),
            "application/pdf",
            None,
            "application/pdf",
        )
        .await;
    }
    let res = upload(&server, &bob, pdf(), "application/pdf", None).await;
    assert!(res.headers().contains_key("retry-after"));
    expect_error(res, 429, "upload_quota").await;
    // Positive control: quotas are per user.
    upload_ok(
        &server,
        &carol,
        &pdf(),
        "application/pdf",
        None,
        "application/pdf",
    )
    .await;
    staging_is_empty(&server);
}

/// An upload no message carries is deleted, row and bytes, after the grace period;
/// one a message carries stays.
async fn sweeper(setup: Setup) {
    let opts = options(
        setup,
        &[
            ("TIDINGS_UPLOADS_UNATTACHED_GRACE_SECS", "3"),
            ("TIDINGS_UPLOADS_SWEEP_INTERVAL_SECS", "1"),
        ],
    );
    let bucket = opts
        .env
        .iter()
        .find(|(k, _)| k == "TIDINGS_UPLOADS_S3_BUCKET")
        .map(|(_, v)| v.clone());
    let server = Server::start_with(opts).await;
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let conv = conversation(&server, &alice, "direct", &[&bob]).await;
    let unsent = upload_ok(&server, &alice, &png(), "image/png", None, "image/png").await;
    let unsent = unsent["id"].as_str().unwrap().to_owned();
    let sent = upload_ok(
        &server,
        &alice,
        &pdf(),
        "application/pdf",
        None,
        "application/pdf",
    )
    .await;
    let sent = sent["id"].as_str().unwrap().to_owned();
    let res = client()
        .post(server.url(&format!("/v1/conversations/{conv}/messages")))
        .bearer_auth(&alice.access)
        .json(&json!({"client_msg_id": "with-file", "body": "", "attachment": sent}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 201);

    // Where the bytes are, as the storage itself answers.
    let stored = |id: String| {
        let (server, alice, bucket) = (&server, &alice, bucket.clone());
        async move {
            match bucket {
                None => server
                    .data_path(&format!("uploads/{}/{id}", alice.id))
                    .exists(),
                Some(bucket) => {
                    // Listing the bucket (moto allows it unsigned; objects are private).
                    let key = format!("{}/{id}", alice.id);
                    let url = format!("{}/{bucket}?prefix={key}", s3_endpoint());
                    let listing = client().get(url).send().await.expect("S3 list");
                    assert_eq!(listing.status(), 200);
                    let xml = listing.text().await.expect("listing");
                    xml.contains(&format!("<Key>{key}</Key>"))
                }
            }
        }
    };
    assert!(
        stored(unsent.clone()).await && stored(sent.clone()).await,
        "both stored at first"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while download(&server, &alice, &unsent).await.status != 404 {
        assert!(
            std::time::Instant::now() < deadline,
            "the unsent upload was never swept"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!stored(unsent).await, "its bytes are gone too");
    assert!(stored(sent.clone()).await, "the sent one's bytes stay");
    download_ok(&server, setup, &bob, &sent, &pdf()).await;
    assert!(
        server.logs().contains("deleted uploads no message carries"),
        "{}",
        server.logs()
    );
}

/// A raw GET of an attachment with extra headers, not following redirects.
async fn get_with(
    server: &Server,
    who: &Account,
    id: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut req = no_redirects
        .get(server.url(&format!("/v1/attachments/{id}")))
        .bearer_auth(&who.access);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("download")
}

/// Range (206/416), If-None-Match (304), If-Range, inline images with nosniff and a
/// sandboxing CSP, and image dimensions read at upload.
async fn ranges_conditional_gets_and_images(setup: Setup) {
    let server = Server::start_with(options(setup, &[])).await;
    let alice = register(&server, "alice").await;
    let image = upload_ok(
        &server,
        &alice,
        &png(),
        "image/png",
        Some("dot.png"),
        "image/png",
    )
    .await;
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(1), Some(1)),
        "{image}"
    );
    let clip = video(100_000);
    let movie = upload_ok(
        &server,
        &alice,
        &clip,
        "video/mp4",
        Some("clip.mp4"),
        "video/mp4",
    )
    .await;
    assert!(
        movie.get("width").is_none(),
        "only images get dimensions: {movie}"
    );
    let (image, movie) = (image["id"].as_str().unwrap(), movie["id"].as_str().unwrap());

    // Conditional GET: answered before any storage is touched, on either backend.
    let first = download(&server, &alice, movie).await;
    let etag = format!("\"{}\"", sha256_hex(&clip));
    let res = get_with(&server, &alice, movie, &[("if-none-match", &etag)]).await;
    assert_eq!(res.status(), 304);
    assert_eq!(res.headers()["etag"], etag.as_str());
    assert!(res.bytes().await.unwrap().is_empty());
    let res = get_with(
        &server,
        &alice,
        movie,
        &[("if-none-match", "\"something-else\"")],
    )
    .await;
    assert_ne!(res.status(), 304, "a different ETag is not a match");

    if setup == Setup::PostgresS3 {
        // Ranges are the object store's, on the redirected request.
        let res = get_with(&server, &alice, movie, &[]).await;
        assert_eq!(res.status(), 302);
        let location = res.headers()["location"].to_str().unwrap().to_owned();
        let part = client()
            .get(&location)
            .header("range", "bytes=10-19")
            .send()
            .await
            .unwrap();
        assert_eq!(part.status(), 206);
        assert_eq!(part.bytes().await.unwrap().to_vec(), clip[10..20].to_vec());
        let shown = download(&server, &alice, image).await;
        assert!(
            shown.header("content-disposition").starts_with("inline;"),
            "{:?}",
            shown.headers
        );
        assert!(first
            .header("content-disposition")
            .starts_with("attachment;"));
        return;
    }

    assert_eq!(first.header("accept-ranges"), "bytes");
    assert_eq!(first.header("etag"), etag);
    let res = get_with(&server, &alice, movie, &[("range", "bytes=10-19")]).await;
    assert_eq!(res.status(), 206);
    assert_eq!(res.headers()["content-range"], "bytes 10-19/100000");
    assert_eq!(res.headers()["content-length"], "10");
    assert_eq!(res.bytes().await.unwrap().to_vec(), clip[10..20].to_vec());
    let res = get_with(&server, &alice, movie, &[("range", "bytes=-5")]).await;
    assert_eq!(res.status(), 206);
    assert_eq!(
        res.bytes().await.unwrap().to_vec(),
        clip[clip.len() - 5..].to_vec()
    );
    let res = get_with(&server, &alice, movie, &[("range", "bytes=99990-")]).await;
    assert_eq!(res.headers()["content-range"], "bytes 99990-99999/100000");
    assert_eq!(res.bytes().await.unwrap().len(), 10);
    let res = get_with(&server, &alice, movie, &[("range", "bytes=100000-")]).await;
    assert_eq!(res.headers()["content-range"], "bytes */100000");
    expect_error(res, 416, "range_not_satisfiable").await;
    // If-Range with another version's tag: the whole file, not a piece of the wrong one.
    let res = get_with(
        &server,
        &alice,
        movie,
        &[("range", "bytes=0-9"), ("if-range", "\"old\"")],
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().len(), clip.len());
    let res = get_with(
        &server,
        &alice,
        movie,
        &[("range", "bytes=0-9"), ("if-range", &etag)],
    )
    .await;
    assert_eq!(res.status(), 206);

    // An image is shown in place, but still never sniffed and never active.
    let shown = download(&server, &alice, image).await;
    assert!(
        shown
            .header("content-disposition")
            .starts_with("inline; filename=\"dot.png\""),
        "{:?}",
        shown.headers
    );
    assert_eq!(shown.header("x-content-type-options"), "nosniff");
    let csp = shown.header("content-security-policy");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("sandbox"),
        "{csp}"
    );
    assert!(first
        .header("content-disposition")
        .starts_with("attachment; filename=\"clip.mp4\""));
    assert!(first.header("content-security-policy").contains("sandbox"));
}

macro_rules! on_both_setups {
    ($($name:ident),* $(,)?) => {
        mod sqlite_local {
            $( #[tokio::test] async fn $name() { super::$name(super::Setup::SqliteLocal).await } )*
        }
        mod postgres_s3 {
            $( #[tokio::test] async fn $name() { super::$name(super::Setup::PostgresS3).await } )*
        }
    };
}

on_both_setups!(
    share_through_a_message,
    refusals,
    quotas,
    sweeper,
    ranges_conditional_gets_and_images
);
