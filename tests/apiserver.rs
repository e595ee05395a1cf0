mod support;

#[tokio::test]
async fn starts() {
    let srv = support::TestApiServer::start().await;
    assert!(srv.url().starts_with("http://127.0.0.1:"));
}
