//! Media messages against real Chromium, the simulator and the real control plane: an image
//! uploaded and a PDF fetched from a URL reach the recipient with the same bytes (WhatsApp's
//! encryption, upload and the recipient's decryption in between), bad media is refused with its
//! code before anything is accepted, and an image a WhatsApp user sends is listed with its
//! metadata and downloaded through the page with the same bytes.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use whatsapp_tests::harness::{TestNamespace, cluster, eventually};
use whatsapp_tests::processes::{SessionProcess, TEST_HUB_TOKEN};
use whatsapp_tests::simulator::{SimConfig, Simulator};

/// The session's account.
const PHONE: &str = "5491122334455";
/// A WhatsApp user it writes to, and who writes to it.
const FRIEND: &str = "5491166667777";

fn simulator() -> SimConfig {
    SimConfig {
        first_ref: Duration::from_secs(4),
        next_ref: Duration::from_secs(2),
        sync: Duration::from_millis(1500),
        ..SimConfig::default()
    }
}

async fn linked(ns: &TestNamespace, sim: &Simulator, name: &str) -> SessionProcess {
    ns.create_session(name, json!({"clienteId": 1})).await;
    // The test's file server is on loopback: this session may fetch from private networks
    // (a product setting, off by default; its refusal is unit-tested in the session pod).
    let env = [("WAO_MEDIA_FROM_PRIVATE_NETWORKS", "true")];
    let process = SessionProcess::start_with(ns, name, &ns.profile_dir(name), sim, &env);
    ns.link(sim, name, PHONE).await;
    process
}

/// A real PNG (the page decodes images to make their preview).
fn png(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let pixels: Vec<u8> = (0..width * height * 3).map(|i| (i * 7 % 251) as u8).collect();
        encoder.write_header().unwrap().write_image_data(&pixels).unwrap();
    }
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

const PDF: &[u8] = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n";

/// A web server on loopback, as a caller's file host: a PDF, a 404, and an "image" larger than
/// WhatsApp takes, streamed without a length.
async fn file_host() -> String {
    let too_big = || async {
        let header = futures::stream::once(async { Ok::<_, std::io::Error>(png(2, 2)) });
        let rest = futures::stream::iter((0..17).map(|_| Ok(vec![0u8; 1024 * 1024])));
        Body::from_stream(futures::StreamExt::chain(header, rest))
    };
    let app = Router::new()
        .route(
            "/files/Offer%202026.pdf",
            axum::routing::get(|| async { ([("content-type", "application/pdf")], PDF) }),
        )
        .route("/files/big.png", axum::routing::get(too_big));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

async fn post_outbox(process: &SessionProcess, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/outbox", process.url()))
        .bearer_auth(TEST_HUB_TOKEN)
        .json(body)
        .send()
        .await
        .unwrap();
    let code = response.status().as_u16();
    (code, response.json().await.unwrap_or(Value::Null))
}

async fn get(process: &SessionProcess, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}{path}", process.url()))
        .bearer_auth(TEST_HUB_TOKEN)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_uploaded_image_and_a_fetched_pdf_reach_the_recipient_with_their_bytes() {
    let ns = cluster().namespace("media-send").await;
    let sim = Simulator::start(simulator()).await.unwrap();
    let host = file_host().await;
    let process = linked(&ns, &sim, "acme").await;
    let image = png(64, 48);
    let body = json!({"messages": [
        {"to": FRIEND, "message": "our catalogue", "media": {"dataBase64": b64(&image), "mimetype": "image/png"}},
        {"to": FRIEND, "media": {"url": format!("{host}/files/Offer%202026.pdf"), "mimetype": "application/pdf"}},
    ]});
    let (code, accepted) = post_outbox(&process, &body).await;
    assert_eq!(code, 202, "{accepted}");
    let ids: Vec<String> = accepted["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();

    // Accepted means on the volume: the bytes are there under their hash before anything is sent.
    let (image_sha, pdf_sha) = (sha256_hex(&image), sha256_hex(PDF));
    for sha in [&image_sha, &pdf_sha] {
        let stored =
            std::fs::read(process.profile.join("outbox-media").join(sha)).expect("the media on the volume");
        assert_eq!(&sha256_hex(&stored), sha);
    }

    let received = eventually("both at the recipient", Duration::from_secs(60), || async {
        let all = sim.messages();
        let ours: Vec<_> = ids.iter().filter_map(|id| all.iter().find(|m| &m.id == id).cloned()).collect();
        Ok((ours.len() == 2).then_some(ours))
    })
    .await;
    let (photo, document) = (&received[0], &received[1]);
    let photo_media = photo.media.as_ref().expect("the image is media");
    assert_eq!(
        (photo.body.as_str(), photo_media.kind.as_str(), photo_media.mimetype.as_str(), &photo_media.sha256),
        ("our catalogue", "image", "image/png", &image_sha),
        "the recipient decrypted the same image with its caption"
    );
    assert_eq!(photo_media.size, image.len() as u64);
    let document_media = document.media.as_ref().expect("the PDF is media");
    assert_eq!(
        (document.body.as_str(), document_media.kind.as_str(), document_media.mimetype.as_str()),
        ("", "document", "application/pdf")
    );
    assert_eq!(
        (&document_media.sha256, document_media.filename.as_deref()),
        (&pdf_sha, Some("Offer 2026.pdf")),
        "the same PDF, named after the URL"
    );

    // The outbox shows each with its media, sent.
    let shown: Value = eventually("both sent in the outbox", Duration::from_secs(30), || async {
        let m: Value = get(&process, &format!("/v1/outbox/{}", ids[1])).await.json().await.unwrap();
        Ok((m["status"] != "queued" && m["status"] != "sending").then_some(m))
    })
    .await;
    assert_eq!(
        shown["media"],
        json!({"kind": "document", "mimetype": "application/pdf", "filename": "Offer 2026.pdf", "size": PDF.len(), "sha256": pdf_sha}),
        "{shown}"
    );
    assert!(["sent", "delivered", "read"].contains(&shown["status"].as_str().unwrap()), "{shown}");

    bad_media_is_refused(&process, &host).await;
}

/// Every refusal with its status and code, and nothing of a refused batch accepted.
async fn bad_media_is_refused(process: &SessionProcess, host: &str) {
    let jpeg = [0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F', 0, 1];
    let cases = [
        (json!({"dataBase64": b64(&jpeg), "mimetype": "image/png"}), 400, "INVALID_MEDIA"),
        (json!({"dataBase64": "not base64!", "mimetype": "image/png"}), 400, "INVALID_MEDIA"),
        (
            json!({"dataBase64": b64(&png(2, 2)), "url": format!("{host}/files/big.png"), "mimetype": "image/png"}),
            400,
            "INVALID_MEDIA",
        ),
        (
            json!({"url": format!("{host}/files/missing.pdf"), "mimetype": "application/pdf"}),
            400,
            "INVALID_MEDIA",
        ),
        (json!({"url": "file:///etc/passwd", "mimetype": "application/pdf"}), 400, "INVALID_MEDIA"),
        (json!({"dataBase64": b64(&png(2, 2)), "mimetype": "png"}), 400, "INVALID_MEDIA"),
        (
            json!({"dataBase64": b64(b"GIF89a\x01\0\x01\0"), "mimetype": "image/gif", "kind": "image"}),
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (json!({"url": format!("{host}/files/big.png"), "mimetype": "image/png"}), 413, "MEDIA_TOO_LARGE"),
    ];
    for (media, status, code) in cases {
        let body = json!({"messages": [
            {"to": FRIEND, "message": "fine"},
            {"to": FRIEND, "message": "caption", "media": media},
        ]});
        let (got, refused) = post_outbox(process, &body).await;
        assert_eq!(
            (got, refused["error"].as_str(), refused["index"].as_u64()),
            (status, Some(code), Some(1)),
            "{media}: {refused}"
        );
        assert!(refused["message"].as_str().unwrap().starts_with("messages[1]: "), "{refused}");
    }
    let listed: Value = get(process, "/v1/outbox?limit=1000").await.json().await.unwrap();
    assert_eq!(
        listed["messages"].as_array().unwrap().len(),
        2,
        "nothing of a refused call is accepted: {listed}"
    );
    // A file the sniffing cannot tell goes as a document, as declared.
    let csv = json!({"messages": [{"to": FRIEND, "media": {"dataBase64": b64(b"a,b\n1,2\n"), "mimetype": "text/csv", "filename": "../../data.csv"}}]});
    let (code, accepted) = post_outbox(process, &csv).await;
    assert_eq!(code, 202, "{accepted}");
    let id = accepted["messages"][0]["id"].as_str().unwrap();
    let shown: Value = get(process, &format!("/v1/outbox/{id}")).await.json().await.unwrap();
    assert_eq!(
        (&shown["media"]["kind"], &shown["media"]["filename"]),
        (&json!("document"), &json!("data.csv"))
    );
}

#[tokio::test]
async fn an_image_from_a_whatsapp_user_is_listed_and_downloaded_with_its_bytes() {
    let ns = cluster().namespace("media-receive").await;
    let sim = Simulator::start(simulator()).await.unwrap();
    let process = linked(&ns, &sim, "acme").await;
    let image = png(32, 32);
    let id = sim.send_media_from_phone(FRIEND, PHONE, "image/png", &image, "look at this", None).unwrap();
    let text = sim.send_from_phone(FRIEND, PHONE, "and a text").unwrap();

    let listed = eventually("both listed", Duration::from_secs(60), || async {
        let page: Value = get(&process, "/v1/inbound").await.json().await.map_err(|e| e.to_string())?;
        Ok((page["messages"].as_array().map(Vec::len) == Some(2)).then_some(page))
    })
    .await;
    let photo = &listed["messages"][1];
    assert_eq!(
        (&photo["id"], &photo["type"], &photo["body"], &photo["media"]),
        (
            &json!(id),
            &json!("image"),
            &json!("look at this"),
            &json!({"mimetype": "image/png", "size": image.len(), "filename": null})
        ),
        "{photo}"
    );

    let response = get(&process, &format!("/v1/inbound/{id}/media")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    let bytes = response.bytes().await.unwrap();
    assert_eq!(sha256_hex(&bytes), sha256_hex(&image), "the same image, decrypted by the page");

    for (path, status, code) in [
        (format!("/v1/inbound/{text}/media"), 404, "MEDIA_NOT_FOUND"),
        ("/v1/inbound/3A0000000000/media".to_string(), 404, "MESSAGE_NOT_FOUND"),
    ] {
        let response = get(&process, &path).await;
        let got = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!((got, body["error"].as_str()), (status, Some(code)), "{path}: {body}");
    }

    // A document keeps its name, and the download offers it.
    let pdf =
        sim.send_media_from_phone(FRIEND, PHONE, "application/pdf", PDF, "", Some("invoice.pdf")).unwrap();
    let response = eventually("the document downloadable", Duration::from_secs(30), || async {
        let response = get(&process, &format!("/v1/inbound/{pdf}/media")).await;
        Ok((response.status() == 200).then_some(response))
    })
    .await;
    assert_eq!(response.headers()["content-disposition"], "attachment; filename=\"invoice.pdf\"");
    assert_eq!(response.bytes().await.unwrap().as_ref(), PDF);
}
