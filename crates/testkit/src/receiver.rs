//! Local HTTP receivers for notification tests: one that records every request and answers
//! as told, one that holds every request without answering.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    body::Bytes, extract::State, http::HeaderMap, response::Response, routing::post, Router,
};

use super::eventually;

type Answer = Box<dyn Fn(usize) -> Response + Send + Sync>;

pub struct Receiver {
    pub url: String,
    pub seen: Arc<Mutex<Vec<(HeaderMap, Bytes, std::time::Instant)>>>,
}

#[derive(Clone)]
struct ReceiverState {
    seen: Arc<Mutex<Vec<(HeaderMap, Bytes, std::time::Instant)>>>,
    answer: Arc<Answer>,
}

async fn receive(State(s): State<ReceiverState>, headers: HeaderMap, body: Bytes) -> Response {
    let n = {
        let mut seen = s.seen.lock().unwrap();
        seen.push((headers, body, std::time::Instant::now()));
        seen.len()
    };
    (s.answer)(n)
}

/// A receiver answering its n-th request (from 1) with `answer(n)`.
pub fn receiver(answer: impl Fn(usize) -> Response + Send + Sync + 'static) -> Receiver {
    let seen = Arc::default();
    let state = ReceiverState {
        seen: Arc::clone(&seen),
        answer: Arc::new(Box::new(answer)),
    };
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(state);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(
        axum::Server::from_tcp(listener)
            .unwrap()
            .serve(app.into_make_service()),
    );
    Receiver {
        url: format!("http://{addr}/hook"),
        seen,
    }
}

impl Receiver {
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub async fn wait_for(&self, n: usize) {
        eventually(10, &format!("{n} request(s) at the receiver"), || {
            self.count() >= n
        })
        .await;
    }
}

/// A receiver that accepts connections and reads requests but never answers; the count of
/// requests it has begun.
pub fn receiver_hanging() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let begun = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = begun.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    (url, begun)
}
