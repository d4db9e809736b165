//! The fake ADS server: real tonic over real TLS, handing each client stream to the test.

use super::*;

/// A server-side TLS stream tonic can serve (tonic only implements `Connected` for its own
/// TLS types, which need a feature ambit does not enable).
pub(super) struct TlsIo(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for TlsIo {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// One client stream as the fake server sees it.
pub(super) struct FakeConn {
    pub(super) token: Option<String>,
    pub(super) requests: tonic::Streaming<DeltaDiscoveryRequest>,
    pub(super) responses: mpsc::Sender<Result<DeltaDiscoveryResponse, tonic::Status>>,
    pub(super) nonce: u64,
}

impl FakeConn {
    pub(super) async fn recv(&mut self) -> DeltaDiscoveryRequest {
        within("a request", self.requests.message())
            .await
            .expect("request stream failed")
            .expect("request stream ended")
    }

    /// The three initial subscriptions, by type.
    pub(super) async fn subscriptions(&mut self) -> BTreeMap<Kind, DeltaDiscoveryRequest> {
        let mut out = BTreeMap::new();
        for _ in Kind::ALL {
            let req = self.recv().await;
            assert!(req.response_nonce.is_empty(), "not a subscription: {req:?}");
            let kind = Kind::from_type_url(&req.type_url).expect("known type");
            out.insert(kind, req);
        }
        out
    }

    /// Sends a response and returns the client's reply to it.
    pub(super) async fn push(
        &mut self,
        kind: Kind,
        resources: Vec<Resource>,
        removed: &[&str],
    ) -> DeltaDiscoveryRequest {
        self.nonce += 1;
        let nonce = format!("n{}", self.nonce);
        self.push_raw(DeltaDiscoveryResponse {
            type_url: kind.type_url().to_string(),
            resources,
            removed_resources: removed.iter().map(|s| s.to_string()).collect(),
            nonce: nonce.clone(),
            ..Default::default()
        })
        .await;
        let reply = self.recv().await;
        assert_eq!(reply.response_nonce, nonce, "reply to the wrong response");
        assert_eq!(reply.type_url, kind.type_url());
        reply
    }

    pub(super) async fn push_raw(&mut self, resp: DeltaDiscoveryResponse) {
        self.responses
            .send(Ok(resp))
            .await
            .expect("client stream gone");
    }

    /// Subscriptions, then an empty push of every type; returns the subscriptions.
    pub(super) async fn initial_empty_push(&mut self) -> BTreeMap<Kind, DeltaDiscoveryRequest> {
        let subs = self.subscriptions().await;
        for kind in Kind::ALL {
            assert_ack(&self.push(kind, vec![], &[]).await);
        }
        subs
    }
}

pub(super) struct FakeAds {
    conns: mpsc::UnboundedSender<FakeConn>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for FakeAds {
    type DeltaAggregatedResourcesStream =
        ReceiverStream<Result<DeltaDiscoveryResponse, tonic::Status>>;

    async fn delta_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (tx, rx) = mpsc::channel(16);
        let conn = FakeConn {
            token,
            requests: request.into_inner(),
            responses: tx,
            nonce: 0,
        };
        self.conns
            .send(conn)
            .map_err(|_| tonic::Status::unavailable("test over"))?;
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

pub(super) struct Harness {
    pub(super) addr: SocketAddr,
    pub(super) conns: mpsc::UnboundedReceiver<FakeConn>,
    pub(super) roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    pub(super) handle: crate::state::StateHandle,
    pub(super) readiness: Readiness,
    pub(super) reloads: watch::Receiver<(u32, u32)>,
    pub(super) _dir: TempDir,
}

/// Starts a fake ADS server presenting a certificate for `server_id`, and an xDS client
/// connected to it with a token file.
pub(super) async fn start(server_id: &Identity) -> Harness {
    let ca = CertificateAuthority::generate(TD).expect("CA");
    let cert = ca
        .issue(server_id, Duration::from_secs(3600))
        .expect("server cert");
    let mut server_tls = rustls::ServerConfig::builder_with_provider(mesh::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(cert.chain.clone(), cert.key().clone_key())
        .expect("server config");
    server_tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls));

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (io_tx, io_rx) = mpsc::channel::<io::Result<TlsIo>>(4);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            // A failed handshake (e.g. the client refused our cert) is just not a connection.
            if let Ok(tls) = acceptor.accept(tcp).await {
                if io_tx.send(Ok(TlsIo(tls))).await.is_err() {
                    return;
                }
            }
        }
    });
    let (conn_tx, conns) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(FakeAds {
                conns: conn_tx,
            }))
            .serve_with_incoming(ReceiverStream::new(io_rx)),
    );

    let dir = TempDir::new();
    let token_file = dir.0.join("token");
    std::fs::write(&token_file, "s3cret\n").expect("token");
    let roots = cert.roots.clone();
    let tls = tls::client_config(
        &roots,
        ServerIdentity::Namespace {
            trust_domain: TD.into(),
            namespace: "istio-system".into(),
        },
    )
    .expect("client tls");
    let cfg = XdsClientConfig {
        address: addr.to_string(),
        server_name: ServerName::from(addr.ip()),
        tls,
        token_file: Some(token_file),
        node: node(),
        backoff: Backoff {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(20),
        },
    };
    let readiness = Readiness::new();
    let ready = readiness.register("xds");
    let (publisher, handle) = crate::state::StatePublisher::new(State::default());
    let (reload_tx, reloads) = watch::channel((0u32, 0u32));
    let client = XdsClient::new(cfg, publisher, Some(ready), move |ok| {
        reload_tx.send_modify(|(good, bad)| if ok { *good += 1 } else { *bad += 1 });
    });
    tokio::spawn(client.run());
    Harness {
        addr,
        conns,
        roots,
        handle,
        readiness,
        reloads,
        _dir: dir,
    }
}

impl Harness {
    pub(super) async fn accept(&mut self) -> FakeConn {
        within("a client stream", self.conns.recv())
            .await
            .expect("server gone")
    }
}

/// A unique temporary directory, removed on drop.
pub(super) struct TempDir(std::path::PathBuf);

impl TempDir {
    pub(super) fn new() -> Self {
        let p = std::env::temp_dir().join(format!(
            "ambit-xds-test-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&p).expect("tempdir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn control_plane_id() -> Identity {
    Identity::new(TD, "istio-system", "ambit-control-plane").unwrap()
}

pub(super) fn node() -> NodeInfo {
    NodeInfo {
        pod_name: "ztunnel-abcde".into(),
        pod_namespace: "istio-system".into(),
        instance_ip: "10.0.0.5".parse().unwrap(),
        node_name: "node-a".into(),
    }
}
