//! `/api/certificates`.

use axum::response::Response;
use serde::Deserialize;
use uuid::Uuid;

use super::http::{json, page, sort_by, ApiError, Errors, PageQuery, Req};
use super::model::Certificate;
use super::routes::{created, no_content, non_null, path_id, Shared};
use super::validate::{self, required};
use super::views;

pub(super) fn list_certificates(s: &Shared, req: &Req) -> Result<Response, ApiError> {
    let q = PageQuery::from_req(req)?;
    let mut items: Vec<views::CertificateItem> = {
        let st = s.state();
        st.certificates()
            .iter()
            .filter(|c| c.name.contains(&q.search_text))
            .map(|c| views::certificate_item(&st, c, true))
            .collect()
    };
    sort_by(
        &mut items,
        &q.sort_by,
        q.ascending,
        views::certificate_sort_key,
        views::CERTIFICATE_ITEM_PROPERTIES,
    )?;
    let total = items.len() as i64;
    Ok(json(&page(items, total, q.page_index, q.page_size)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CertificateCommand {
    #[serde(default, deserialize_with = "non_null")]
    id: Option<Uuid>,
    name: Option<String>,
    public_key: Option<String>,
    private_key: Option<String>,
}

fn certificate_fields(cmd: CertificateCommand) -> Result<(String, String, String), ApiError> {
    let mut model = Errors::default();
    let name = required(&mut model, "Name", cmd.name);
    let public_key = required(&mut model, "PublicKey", cmd.public_key);
    let private_key = required(&mut model, "PrivateKey", cmd.private_key);
    model.check_model()?;
    Ok((name, public_key, private_key))
}

pub(super) fn create_certificate(s: &Shared, req: &Req) -> Result<Response, ApiError> {
    let (name, public_key, private_key) = certificate_fields(req.json()?)?;
    let mut st = s.state();
    let mut errors = Errors::default();
    validate::certificate_name(&mut errors, &st, &name, None);
    errors.check()?;
    let id = Uuid::new_v4();
    st.insert_certificate(Certificate {
        id,
        name,
        public_key,
        private_key,
    });
    Ok(created(id))
}

pub(super) fn update_certificate(
    s: &Shared,
    req: &Req,
    raw_id: &str,
) -> Result<Response, ApiError> {
    let id = path_id(raw_id, "id")?;
    let cmd: CertificateCommand = req.json()?;
    let body_id = cmd.id.unwrap_or_default();
    let (name, public_key, private_key) = certificate_fields(cmd)?;
    if body_id != id {
        return Err(ApiError::BadRequestEmpty);
    }
    let mut st = s.state();
    let mut errors = Errors::default();
    validate::certificate_name(&mut errors, &st, &name, Some(id));
    errors.check()?;
    st.update_certificate(
        id,
        Certificate {
            id,
            name,
            public_key,
            private_key,
        },
    )
    .ok_or(ApiError::not_found("Certificate", id))?;
    Ok(no_content())
}

pub(super) fn delete_certificate(s: &Shared, raw_id: &str) -> Result<Response, ApiError> {
    let id = path_id(raw_id, "id")?;
    let mut st = s.state();
    st.remove_certificate(id)
        .ok_or(ApiError::not_found("Certificate", id))?;
    Ok(no_content())
}
