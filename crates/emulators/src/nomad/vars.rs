//! Variables, check-and-set and variable locks (NOMAD-API.md §2.1, §2.2).
//!
//! Lock timing follows `nomad/locks.go`: a held lock expires 2×TTL after its acquisition or
//! last renewal (renewals then fail), and is freed LockDelay later; until then others cannot
//! acquire it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use super::duration::{format_go, parse_go};
use super::http::ApiError;
use super::sched::now_ns;
use super::state::{LockTimer, State, Timer, VarLock, Variable};
use super::Settings;

const MAX_LOCK_TTL: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(15);
const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);

/// What a successful write answers: status, body and `X-Nomad-Index`.
pub struct VarReply {
    pub status: u16,
    pub body: Option<Value>,
    pub index: u64,
}

/// Which `PUT /v1/var/:path` operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VarOp {
    Set { cas: Option<u64> },
    Acquire,
    Renew,
    Release,
}

/// The decoded body of a variable write (`VariableDecrypted`; keys case-insensitive).
#[derive(Debug, Default)]
pub struct VarBody {
    pub namespace: Option<String>,
    pub items: Option<BTreeMap<String, String>>,
    pub lock_id: Option<String>,
    pub lock_ttl: Option<Duration>,
    pub lock_delay: Option<Duration>,
}

fn field<'a>(obj: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

/// A lock duration: a Go duration string or integer nanoseconds (`VariableLock.UnmarshalJSON`).
fn lock_duration(v: &Value, name: &str) -> Result<Duration, ApiError> {
    let bad = || ApiError::text(400, format!("invalid {name} duration: {v}"));
    match v {
        Value::String(s) => {
            let ns = parse_go(s).ok_or_else(bad)?;
            if ns < 0 {
                return Err(ApiError::text(400, "Lock delay and TTL must be positive"));
            }
            Ok(Duration::from_nanos(ns as u64))
        }
        Value::Number(n) => match n.as_i64() {
            Some(ns) if ns >= 0 => Ok(Duration::from_nanos(ns as u64)),
            Some(_) => Err(ApiError::text(400, "Lock delay and TTL must be positive")),
            None => Err(bad()),
        },
        _ => Err(bad()),
    }
}

pub fn decode_body(bytes: &[u8]) -> Result<VarBody, ApiError> {
    if bytes.is_empty() {
        return Ok(VarBody::default());
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| ApiError::text(400, e.to_string()))?;
    let Some(obj) = v.as_object() else {
        return Err(ApiError::text(
            400,
            "json: cannot unmarshal into Go value of type structs.VariableDecrypted",
        ));
    };
    let mut out = VarBody {
        namespace: field(obj, "Namespace")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        ..Default::default()
    };
    if let Some(items) = field(obj, "Items") {
        let Some(map) = items.as_object() else {
            return Err(ApiError::text(
                400,
                "json: cannot unmarshal into Go struct field VariableDecrypted.Items of type structs.VariableItems",
            ));
        };
        let mut parsed = BTreeMap::new();
        for (k, v) in map {
            let Some(s) = v.as_str() else {
                return Err(ApiError::text(
                    400,
                    "json: cannot unmarshal into Go struct field VariableDecrypted.Items of type string",
                ));
            };
            parsed.insert(k.clone(), s.to_string());
        }
        out.items = Some(parsed);
    }
    if let Some(lock) = field(obj, "Lock").and_then(Value::as_object) {
        out.lock_id = field(lock, "ID")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        out.lock_ttl = field(lock, "TTL")
            .map(|v| lock_duration(v, "TTL"))
            .transpose()?;
        out.lock_delay = field(lock, "LockDelay")
            .map(|v| lock_duration(v, "LockDelay"))
            .transpose()?;
    }
    Ok(out)
}

/// `validVariablePath` and the `nomad/` reservation.
fn validate_path(path: &str) -> Result<(), ApiError> {
    let ok_chars = path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_~/".contains(c));
    if path.is_empty() || path.len() > 128 || !ok_chars {
        return Err(ApiError::text(400, format!("invalid path {path:?}")));
    }
    if path.starts_with("nomad/")
        && !path.starts_with("nomad/jobs")
        && !path.starts_with("nomad/job-templates")
    {
        return Err(ApiError::text(
            400,
            "\"nomad\" is a reserved top-level directory path, but you may write variables to \"nomad/jobs\", \"nomad/job-templates\", or below",
        ));
    }
    Ok(())
}

/// `PUT /v1/var/:path[?cas=N|?lock-*]`.
pub fn put(
    st: &mut State,
    cfg: &Settings,
    query_ns: &str,
    path: &str,
    op: VarOp,
    body: VarBody,
) -> Result<VarReply, ApiError> {
    let ns = body
        .namespace
        .clone()
        .unwrap_or_else(|| query_ns.to_string());
    match op {
        VarOp::Set { cas } => set(st, &ns, path, cas, body),
        VarOp::Acquire => acquire(st, cfg, &ns, path, body),
        // Renew takes the namespace from the query only (`variableLockRenew`).
        VarOp::Renew => renew(st, query_ns, path, body),
        VarOp::Release => release(st, &ns, path, body),
    }
}

fn set(
    st: &mut State,
    ns: &str,
    path: &str,
    cas: Option<u64>,
    body: VarBody,
) -> Result<VarReply, ApiError> {
    let items = body
        .items
        .clone()
        .filter(|i| !i.is_empty())
        .ok_or_else(|| ApiError::text(400, "variable missing required Items object"))?;
    validate_path(path)?;
    let existing = st.var(ns, path).cloned();
    if let Some(want) = cas {
        match &existing {
            Some(e) if want == 0 || e.modify_index != want => return Err(conflict(e)),
            None if want != 0 => {
                return Err(ApiError::json(409, Variable::zero_conflict(ns, path), 0))
            }
            _ => {}
        }
    }
    if let Some(e) = &existing {
        if let Some(lock) = &e.lock {
            if body.lock_id.as_deref() != Some(lock.id.as_str()) {
                return Err(conflict(e));
            }
        }
    }
    let idx = st.bump();
    let now = now_ns();
    let var = Variable {
        namespace: ns.to_string(),
        path: path.to_string(),
        items,
        lock: existing.as_ref().and_then(|e| e.lock.clone()),
        create_index: existing.as_ref().map_or(idx, |e| e.create_index),
        create_time: existing.as_ref().map_or(now, |e| e.create_time),
        modify_index: idx,
        modify_time: now,
    };
    let body = var.with_items(Some(&var.items));
    insert(st, var, idx);
    Ok(VarReply {
        status: 200,
        body: Some(body),
        index: idx,
    })
}

fn conflict(existing: &Variable) -> ApiError {
    ApiError::json(409, existing.conflict(), existing.modify_index)
}

fn insert(st: &mut State, var: Variable, idx: u64) {
    st.variables
        .entry(var.namespace.clone())
        .or_default()
        .insert(var.path.clone(), var);
    st.tables.variables = idx;
}

fn acquire(
    st: &mut State,
    cfg: &Settings,
    ns: &str,
    path: &str,
    body: VarBody,
) -> Result<VarReply, ApiError> {
    validate_path(path)?;
    let ttl = body.lock_ttl.unwrap_or(DEFAULT_LOCK_TTL);
    let delay = body.lock_delay.unwrap_or(DEFAULT_LOCK_DELAY);
    if ttl < cfg.min_lock_ttl || ttl > MAX_LOCK_TTL {
        let min = if cfg.min_lock_ttl == Duration::from_secs(10) {
            "10 seconds".to_string()
        } else {
            format_go(cfg.min_lock_ttl)
        };
        return Err(ApiError::text(
            400,
            format!("TTL must be between {min} and 24 hours"),
        ));
    }
    let existing = st.var(ns, path).cloned();
    if existing.as_ref().is_some_and(|e| e.lock.is_some()) {
        // Held by someone (maybe the caller): the zero-valued conflict of the docs sample.
        return Err(ApiError::json(409, Variable::zero_conflict(ns, path), 0));
    }
    let idx = st.bump();
    let now = now_ns();
    let lock = VarLock {
        id: Uuid::new_v4().to_string(),
        ttl,
        lock_delay: delay,
    };
    let items = body
        .items
        .clone()
        .or_else(|| existing.as_ref().map(|e| e.items.clone()))
        .unwrap_or_default();
    let var = Variable {
        namespace: ns.to_string(),
        path: path.to_string(),
        items,
        lock: Some(lock.clone()),
        create_index: existing.as_ref().map_or(idx, |e| e.create_index),
        create_time: existing.as_ref().map_or(now, |e| e.create_time),
        modify_index: idx,
        modify_time: now,
    };
    // The response carries the items of the request (`makeVariablesApplyResponse`).
    let reply = var.with_items(body.items.as_ref());
    insert(st, var, idx);
    start_ttl_timer(st, ns, path, &lock, 0);
    Ok(VarReply {
        status: 200,
        body: Some(reply),
        index: idx,
    })
}

fn start_ttl_timer(st: &mut State, ns: &str, path: &str, lock: &VarLock, generation: u64) {
    st.lock_timers.insert(
        (ns.to_string(), path.to_string()),
        LockTimer {
            lock_id: lock.id.clone(),
            generation,
            expired: false,
        },
    );
    st.timers.push(Timer::LockTtl {
        namespace: ns.to_string(),
        path: path.to_string(),
        lock_id: lock.id.clone(),
        generation,
        after: lock.ttl * 2,
    });
}

fn renew(st: &mut State, ns: &str, path: &str, body: VarBody) -> Result<VarReply, ApiError> {
    let lock_id = body
        .lock_id
        .ok_or_else(|| ApiError::text(400, "missing lock ID"))?;
    let Some(var) = st.var(ns, path).cloned() else {
        return Err(ApiError::text(404, "variable doesn't exist"));
    };
    let Some(lock) = &var.lock else {
        return Err(ApiError::text(409, "variable doesn't hold a lock"));
    };
    if lock.id != lock_id {
        return Err(ApiError::text(409, "attempting to modify locked variable"));
    }
    let key = (ns.to_string(), path.to_string());
    let generation = match st.lock_timers.get(&key) {
        Some(t) if !t.expired && t.lock_id == lock_id => t.generation + 1,
        // The TTL ran out: the lock is on its way out after LockDelay.
        _ => return Err(ApiError::text(409, "attempting to modify locked variable")),
    };
    start_ttl_timer(st, ns, path, lock, generation);
    // A renewal is not a write: the variable and the index are unchanged.
    Ok(VarReply {
        status: 200,
        body: Some(var.metadata()),
        index: var.modify_index,
    })
}

fn release(st: &mut State, ns: &str, path: &str, body: VarBody) -> Result<VarReply, ApiError> {
    if body.items.as_ref().is_some_and(|i| !i.is_empty()) {
        return Err(ApiError::text(
            400,
            "lock release operation doesn't allow items in the request",
        ));
    }
    let lock_id = body
        .lock_id
        .ok_or_else(|| ApiError::text(400, "release requires all lock information"))?;
    let Some(var) = st.var(ns, path).cloned() else {
        return Err(ApiError::text(404, "variable doesn't exist"));
    };
    let Some(lock) = &var.lock else {
        return Err(ApiError::text(409, "variable doesn't hold a lock"));
    };
    if lock.id != lock_id {
        return Err(conflict(&var));
    }
    let idx = st.bump();
    let now = now_ns();
    let mut freed = var;
    freed.lock = None;
    freed.modify_index = idx;
    freed.modify_time = now;
    let reply = freed.with_items(None);
    st.lock_timers.remove(&(ns.to_string(), path.to_string()));
    insert(st, freed, idx);
    Ok(VarReply {
        status: 200,
        body: Some(reply),
        index: idx,
    })
}

/// `DELETE /v1/var/:path[?cas=N]`: 204, or 409 with the conflicting variable.
pub fn delete(
    st: &mut State,
    ns: &str,
    path: &str,
    cas: Option<u64>,
) -> Result<VarReply, ApiError> {
    let existing = st.var(ns, path).cloned();
    if let Some(want) = cas {
        match &existing {
            None if want != 0 => {
                return Err(ApiError::json(409, Variable::zero_conflict(ns, path), 0))
            }
            Some(e) if want == 0 || e.modify_index != want => return Err(conflict(e)),
            _ => {}
        }
    }
    let Some(existing) = existing else {
        return Ok(VarReply {
            status: 204,
            body: None,
            index: st.tables.variables.max(1),
        });
    };
    if existing.lock.is_some() {
        return Err(conflict(&existing));
    }
    let idx = st.bump();
    if let Some(m) = st.variables.get_mut(ns) {
        m.remove(path);
        if m.is_empty() {
            st.variables.remove(ns);
        }
    }
    st.tables.variables = idx;
    Ok(VarReply {
        status: 204,
        body: None,
        index: idx,
    })
}

/// Lock TTL expiry and the LockDelay that follows it.
pub fn on_timer(st: &mut State, timer: &Timer) {
    match timer {
        Timer::LockTtl {
            namespace,
            path,
            lock_id,
            generation,
            ..
        } => {
            let key = (namespace.clone(), path.clone());
            let Some(t) = st.lock_timers.get_mut(&key) else {
                return;
            };
            if t.generation != *generation || t.lock_id != *lock_id || t.expired {
                return; // renewed or released since
            }
            t.expired = true;
            let delay = st
                .var(namespace, path)
                .and_then(|v| v.lock.as_ref())
                .map_or(Duration::ZERO, |l| l.lock_delay);
            st.timers.push(Timer::LockDelay {
                namespace: namespace.clone(),
                path: path.clone(),
                lock_id: lock_id.clone(),
                after: delay,
            });
        }
        Timer::LockDelay {
            namespace,
            path,
            lock_id,
            ..
        } => {
            let held_by = st
                .var(namespace, path)
                .and_then(|v| v.lock.as_ref())
                .map(|l| l.id.clone());
            if held_by.as_deref() != Some(lock_id.as_str()) {
                return;
            }
            let idx = st.bump();
            let now = now_ns();
            st.lock_timers.remove(&(namespace.clone(), path.clone()));
            if let Some(v) = st
                .variables
                .get_mut(namespace)
                .and_then(|m| m.get_mut(path))
            {
                v.lock = None;
                v.modify_index = idx;
                v.modify_time = now;
            }
            st.tables.variables = idx;
        }
        _ => {}
    }
}

/// After a restart every held lock gets a fresh 2×TTL (`restoreLockTTLTimers`).
pub fn resume(st: &mut State) {
    let held: Vec<(String, String, VarLock)> = st
        .variables
        .values()
        .flat_map(|m| m.values())
        .filter_map(|v| Some((v.namespace.clone(), v.path.clone(), v.lock.clone()?)))
        .collect();
    for (ns, path, lock) in held {
        start_ttl_timer(st, &ns, &path, &lock, 0);
    }
}
