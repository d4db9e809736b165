//! Counts certificate renewals for `ambit_cert_rotations_total`, around whatever source issues
//! the certificates (the file CA today). The first certificate of an identity is an issue, not
//! a rotation; every later fetch for it is one.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::FutureExt;
use mesh::ca::CaError;
use mesh::cert::WorkloadCertificate;
use mesh::certmanager::CertSource;
use mesh::identity::Identity;

use crate::metrics::Metrics;

pub struct CountingSource<S> {
    inner: S,
    metrics: Metrics,
    issued: Arc<Mutex<HashSet<Identity>>>,
}

impl<S> CountingSource<S> {
    pub fn new(inner: S, metrics: Metrics) -> Self {
        CountingSource {
            inner,
            metrics,
            issued: Arc::default(),
        }
    }
}

impl<S: CertSource> CertSource for CountingSource<S> {
    fn fetch(&self, id: &Identity) -> BoxFuture<'static, Result<WorkloadCertificate, CaError>> {
        let metrics = self.metrics.clone();
        let issued = self.issued.clone();
        let id = id.clone();
        self.inner
            .fetch(&id)
            .map(move |result| {
                let first = !issued.lock().expect("issued lock").contains(&id);
                match &result {
                    Ok(_) if first => {
                        issued.lock().expect("issued lock").insert(id);
                    }
                    Ok(_) => metrics.record_cert_rotation(true),
                    Err(_) if !first => metrics.record_cert_rotation(false),
                    Err(_) => {}
                }
                result
            })
            .boxed()
    }
}
