pub fn routes() -> axum::Router<std::sync::Arc<super::Shared>> {
    axum::Router::new()
}
