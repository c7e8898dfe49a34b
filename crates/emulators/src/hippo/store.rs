//! The emulator's tables as the handlers use them: rows in insertion order, as in
//! [`EmulatorState`] (Hippo's unsorted queries return rows in that order), found by id and by
//! what the handlers look up (an app's channels and revisions, a channel's variables, the
//! apps of a storage id, the channels on a domain, a revision or a certificate) without a scan
//! of the whole table, so that a request costs the same with 10 apps or 10,000.
//!
//! Rows change only through `Store`'s methods, which keep the indexes in step (the fields are
//! private). [`Store::snapshot`] and the state file give the [`EmulatorState`] shape.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};
use uuid::Uuid;

use super::model::{
    Account, App, Certificate, Channel, EmulatorState, EnvVar, IssuedToken, Revision,
};

/// A row with a GUID primary key.
pub trait Keyed {
    fn key(&self) -> Uuid;
}

macro_rules! keyed {
    ($($t:ty),*) => {$(
        impl Keyed for $t {
            fn key(&self) -> Uuid {
                self.id
            }
        }
    )*};
}
keyed!(App, Channel, Revision, EnvVar, Certificate);

/// Insertion position: rows are kept by it, so they iterate in insertion order.
type Seq = u64;

/// One table: rows by insertion position, positions by id.
pub struct Table<T> {
    rows: BTreeMap<Seq, T>,
    seqs: HashMap<Uuid, Seq>,
    next: Seq,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            rows: BTreeMap::new(),
            seqs: HashMap::new(),
            next: 0,
        }
    }
}

impl<T: Keyed> Table<T> {
    /// In insertion order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> {
        self.rows.values()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn get(&self, id: Uuid) -> Option<&T> {
        self.rows.get(self.seqs.get(&id)?)
    }

    fn get_mut(&mut self, id: Uuid) -> Option<&mut T> {
        self.rows.get_mut(self.seqs.get(&id)?)
    }

    fn seq(&self, id: Uuid) -> Option<Seq> {
        self.seqs.get(&id).copied()
    }

    fn insert(&mut self, row: T) -> Seq {
        let seq = self.next;
        self.next += 1;
        self.seqs.insert(row.key(), seq);
        self.rows.insert(seq, row);
        seq
    }

    fn remove(&mut self, id: Uuid) -> Option<(Seq, T)> {
        let seq = self.seqs.remove(&id)?;
        self.rows.remove(&seq).map(|row| (seq, row))
    }

    /// The rows at these positions, in insertion order.
    fn at<'a>(&'a self, seqs: Option<&'a BTreeSet<Seq>>) -> impl Iterator<Item = &'a T> + 'a {
        seqs.into_iter()
            .flatten()
            .filter_map(|seq| self.rows.get(seq))
    }
}

/// A secondary index: the positions of the rows with a given value.
struct Index<K>(HashMap<K, BTreeSet<Seq>>);

impl<K> Default for Index<K> {
    fn default() -> Self {
        Index(HashMap::new())
    }
}

impl<K: Hash + Eq> Index<K> {
    fn add(&mut self, key: K, seq: Seq) {
        self.0.entry(key).or_default().insert(seq);
    }

    fn remove(&mut self, key: &K, seq: Seq) {
        if let Some(set) = self.0.get_mut(key) {
            set.remove(&seq);
            if set.is_empty() {
                self.0.remove(key);
            }
        }
    }

    fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&BTreeSet<Seq>>
    where
        K: Borrow<Q>,
    {
        self.0.get(key)
    }

    /// Moves a row from one value to another.
    fn change(&mut self, old: &Option<K>, new: Option<K>, seq: Seq) {
        if old.as_ref() == new.as_ref() {
            return;
        }
        if let Some(old) = old {
            self.remove(old, seq);
        }
        if let Some(new) = new {
            self.add(new, seq);
        }
    }
}

/// The emulator's database.
#[derive(Default)]
pub struct Store {
    /// A handful of rows each (accounts, unexpired tokens): scanned.
    pub accounts: Vec<Account>,
    pub tokens: Vec<IssuedToken>,
    /// Channel ids whose job was started and not deleted since.
    pub jobs: BTreeSet<Uuid>,
    apps: Table<App>,
    channels: Table<Channel>,
    revisions: Table<Revision>,
    environment_variables: Table<EnvVar>,
    certificates: Table<Certificate>,
    /// App name -> apps.
    app_names: Index<String>,
    /// Storage id -> apps.
    apps_by_storage: Index<String>,
    /// App -> channels.
    channels_by_app: Index<Uuid>,
    /// Domain -> channels.
    channels_by_domain: Index<String>,
    /// Active revision -> channels.
    channels_by_revision: Index<Uuid>,
    /// Certificate -> channels.
    channels_by_certificate: Index<Uuid>,
    /// App -> revisions.
    revisions_by_app: Index<Uuid>,
    /// Channel -> environment variables.
    env_by_channel: Index<Uuid>,
}

/// What a channel is indexed by.
struct ChannelKeys {
    app: Uuid,
    domain: String,
    revision: Option<Uuid>,
    certificate: Option<Uuid>,
}

impl ChannelKeys {
    fn of(ch: &Channel) -> Self {
        ChannelKeys {
            app: ch.app_id,
            domain: ch.domain.clone(),
            revision: ch.active_revision_id,
            certificate: ch.certificate_id,
        }
    }
}

impl From<EmulatorState> for Store {
    fn from(state: EmulatorState) -> Self {
        let mut store = Store {
            accounts: state.accounts,
            tokens: state.tokens,
            jobs: state.jobs,
            ..Store::default()
        };
        for app in state.apps {
            store.insert_app(app);
        }
        for revision in state.revisions {
            store.insert_revision(revision);
        }
        for certificate in state.certificates {
            store.insert_certificate(certificate);
        }
        for channel in state.channels {
            store.insert_channel(channel);
        }
        for var in state.environment_variables {
            store.insert_env(var);
        }
        store
    }
}

impl Store {
    /// A copy of everything, as [`EmulatorState`].
    pub fn snapshot(&self) -> EmulatorState {
        EmulatorState {
            accounts: self.accounts.clone(),
            apps: self.apps.iter().cloned().collect(),
            channels: self.channels.iter().cloned().collect(),
            revisions: self.revisions.iter().cloned().collect(),
            environment_variables: self.environment_variables.iter().cloned().collect(),
            certificates: self.certificates.iter().cloned().collect(),
            jobs: self.jobs.clone(),
            tokens: self.tokens.clone(),
        }
    }

    // -- Reads ------------------------------------------------------------------------------

    pub fn apps(&self) -> &Table<App> {
        &self.apps
    }

    pub fn channels(&self) -> &Table<Channel> {
        &self.channels
    }

    pub fn revisions(&self) -> &Table<Revision> {
        &self.revisions
    }

    pub fn certificates(&self) -> &Table<Certificate> {
        &self.certificates
    }

    pub fn app(&self, id: Uuid) -> Option<&App> {
        self.apps.get(id)
    }

    pub fn channel(&self, id: Uuid) -> Option<&Channel> {
        self.channels.get(id)
    }

    pub fn revision(&self, id: Uuid) -> Option<&Revision> {
        self.revisions.get(id)
    }

    pub fn certificate(&self, id: Uuid) -> Option<&Certificate> {
        self.certificates.get(id)
    }

    /// The app's channels in creation order.
    pub fn channels_of_app(&self, app_id: Uuid) -> impl Iterator<Item = &Channel> {
        self.channels.at(self.channels_by_app.get(&app_id))
    }

    /// The app's revisions in insertion order.
    pub fn revisions_of_app(&self, app_id: Uuid) -> impl Iterator<Item = &Revision> {
        self.revisions.at(self.revisions_by_app.get(&app_id))
    }

    /// The channel's environment variables in insertion order.
    pub fn env_of_channel(&self, channel_id: Uuid) -> impl Iterator<Item = &EnvVar> {
        self.environment_variables
            .at(self.env_by_channel.get(&channel_id))
    }

    /// The apps with this storage id in creation order.
    pub fn apps_with_storage(&self, storage_id: &str) -> impl Iterator<Item = &App> {
        self.apps.at(self.apps_by_storage.get(storage_id))
    }

    /// The channels using this certificate in creation order.
    pub fn channels_with_certificate(
        &self,
        certificate_id: Uuid,
    ) -> impl Iterator<Item = &Channel> {
        self.channels
            .at(self.channels_by_certificate.get(&certificate_id))
    }

    pub fn app_name_taken(&self, name: &str) -> bool {
        self.app_names.get(name).is_some()
    }

    /// Some channel other than `except` has this domain.
    pub fn domain_taken(&self, domain: &str, except: Option<Uuid>) -> bool {
        let except = except.and_then(|id| self.channels.seq(id));
        self.channels_by_domain
            .get(domain)
            .is_some_and(|seqs| seqs.iter().any(|s| Some(*s) != except))
    }

    // -- Apps -------------------------------------------------------------------------------

    pub fn insert_app(&mut self, app: App) {
        let (name, storage) = (app.name.clone(), app.storage_id.clone());
        let seq = self.apps.insert(app);
        self.app_names.add(name, seq);
        self.apps_by_storage.add(storage, seq);
    }

    /// `None` when there is no such app.
    pub fn rename_app(&mut self, id: Uuid, name: String) -> Option<()> {
        let seq = self.apps.seq(id)?;
        let app = self.apps.get_mut(id)?;
        let old = std::mem::replace(&mut app.name, name.clone());
        self.app_names.change(&Some(old), Some(name), seq);
        Some(())
    }

    /// Removes the app with its channels (and their variables) and revisions, as the
    /// database's cascades do; answers the removed channels' ids in creation order.
    pub fn remove_app(&mut self, id: Uuid) -> Vec<Uuid> {
        let channel_ids: Vec<Uuid> = self.channels_of_app(id).map(|c| c.id).collect();
        let revision_ids: Vec<Uuid> = self.revisions_of_app(id).map(|r| r.id).collect();
        for channel_id in &channel_ids {
            self.remove_channel(*channel_id);
        }
        for revision_id in revision_ids {
            self.remove_revision(revision_id);
        }
        if let Some((seq, app)) = self.apps.remove(id) {
            self.app_names.remove(&app.name, seq);
            self.apps_by_storage.remove(&app.storage_id, seq);
        }
        channel_ids
    }

    // -- Channels ---------------------------------------------------------------------------

    pub fn insert_channel(&mut self, channel: Channel) {
        let keys = ChannelKeys::of(&channel);
        let seq = self.channels.insert(channel);
        self.index_channel(None, &keys, seq);
    }

    /// Changes a channel (any field but its id); `None` when there is no such channel.
    pub fn update_channel<R>(&mut self, id: Uuid, f: impl FnOnce(&mut Channel) -> R) -> Option<R> {
        let seq = self.channels.seq(id)?;
        let channel = self.channels.get_mut(id)?;
        let before = ChannelKeys::of(channel);
        let result = f(channel);
        channel.id = id;
        let after = ChannelKeys::of(channel);
        self.index_channel(Some(&before), &after, seq);
        Some(result)
    }

    /// Removes a channel and its environment variables (the database's cascade).
    pub fn remove_channel(&mut self, id: Uuid) -> Option<Channel> {
        let var_ids: Vec<Uuid> = self.env_of_channel(id).map(|e| e.id).collect();
        for var_id in var_ids {
            self.remove_env(var_id);
        }
        let (seq, channel) = self.channels.remove(id)?;
        let keys = ChannelKeys::of(&channel);
        self.channels_by_app.remove(&keys.app, seq);
        self.channels_by_domain.remove(&keys.domain, seq);
        if let Some(r) = keys.revision {
            self.channels_by_revision.remove(&r, seq);
        }
        if let Some(c) = keys.certificate {
            self.channels_by_certificate.remove(&c, seq);
        }
        Some(channel)
    }

    fn index_channel(&mut self, before: Option<&ChannelKeys>, after: &ChannelKeys, seq: Seq) {
        let old = |f: fn(&ChannelKeys) -> Option<Uuid>| before.and_then(f);
        self.channels_by_app
            .change(&before.map(|k| k.app), Some(after.app), seq);
        self.channels_by_domain.change(
            &before.map(|k| k.domain.clone()),
            Some(after.domain.clone()),
            seq,
        );
        self.channels_by_revision
            .change(&old(|k| k.revision), after.revision, seq);
        self.channels_by_certificate
            .change(&old(|k| k.certificate), after.certificate, seq);
    }

    // -- Revisions --------------------------------------------------------------------------

    pub fn insert_revision(&mut self, revision: Revision) {
        let app = revision.app_id;
        let seq = self.revisions.insert(revision);
        self.revisions_by_app.add(app, seq);
    }

    /// Fills in a revision's details from its bindle; `None` when there is no such revision.
    pub fn set_revision_details(
        &mut self,
        id: Uuid,
        description: Option<String>,
        components: Vec<super::model::RevisionComponent>,
    ) -> Option<()> {
        let revision = self.revisions.get_mut(id)?;
        revision.description = description;
        revision.components.extend(components);
        Some(())
    }

    /// Removes a revision; channels whose active revision it was lose it (EF's ClientSetNull
    /// on the optional foreign key).
    pub fn remove_revision(&mut self, id: Uuid) -> Option<Revision> {
        let (seq, revision) = self.revisions.remove(id)?;
        self.revisions_by_app.remove(&revision.app_id, seq);
        let users: Vec<Uuid> = self
            .channels
            .at(self.channels_by_revision.get(&id))
            .map(|c| c.id)
            .collect();
        for channel_id in users {
            self.update_channel(channel_id, |ch| ch.active_revision_id = None);
        }
        Some(revision)
    }

    // -- Environment variables --------------------------------------------------------------

    pub fn insert_env(&mut self, var: EnvVar) {
        let channel = var.channel_id;
        let seq = self.environment_variables.insert(var);
        self.env_by_channel.add(channel, seq);
    }

    /// `None` when there is no such variable.
    pub fn set_env_value(&mut self, id: Uuid, value: String) -> Option<()> {
        self.environment_variables.get_mut(id)?.value = value;
        Some(())
    }

    pub fn remove_env(&mut self, id: Uuid) -> Option<EnvVar> {
        let (seq, var) = self.environment_variables.remove(id)?;
        self.env_by_channel.remove(&var.channel_id, seq);
        Some(var)
    }

    // -- Certificates -----------------------------------------------------------------------

    pub fn insert_certificate(&mut self, certificate: Certificate) {
        self.certificates.insert(certificate);
    }

    /// Replaces a certificate's fields (not its id); `None` when there is no such certificate.
    pub fn update_certificate(&mut self, id: Uuid, certificate: Certificate) -> Option<()> {
        let row = self.certificates.get_mut(id)?;
        *row = Certificate { id, ..certificate };
        Some(())
    }

    /// Removes a certificate; channels using it lose it (ON DELETE SET NULL).
    pub fn remove_certificate(&mut self, id: Uuid) -> Option<Certificate> {
        let (_, certificate) = self.certificates.remove(id)?;
        let users: Vec<Uuid> = self.channels_with_certificate(id).map(|c| c.id).collect();
        for channel_id in users {
            self.update_channel(channel_id, |ch| ch.certificate_id = None);
        }
        Some(certificate)
    }
}

/// A table as a JSON array, in insertion order.
struct Rows<'a, T>(&'a Table<T>);

impl<T: Keyed + Serialize> Serialize for Rows<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter())
    }
}

/// The state file: exactly [`EmulatorState`]'s JSON, without copying the tables first.
impl Serialize for Store {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("EmulatorState", 8)?;
        s.serialize_field("accounts", &self.accounts)?;
        s.serialize_field("apps", &Rows(&self.apps))?;
        s.serialize_field("channels", &Rows(&self.channels))?;
        s.serialize_field("revisions", &Rows(&self.revisions))?;
        s.serialize_field("environmentVariables", &Rows(&self.environment_variables))?;
        s.serialize_field("certificates", &Rows(&self.certificates))?;
        s.serialize_field("jobs", &self.jobs)?;
        s.serialize_field("tokens", &self.tokens)?;
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::super::model::ChannelRevisionSelectionStrategy;
    use super::*;

    fn app(name: &str, storage: &str) -> App {
        App {
            id: Uuid::new_v4(),
            name: name.into(),
            storage_id: storage.into(),
            created: Utc::now(),
        }
    }

    fn channel(app: Uuid, name: &str, revision: Option<Uuid>) -> Channel {
        Channel {
            id: Uuid::new_v4(),
            app_id: app,
            name: name.into(),
            domain: format!("{name}.example.com"),
            revision_selection_strategy: ChannelRevisionSelectionStrategy::UseRangeRule,
            range_rule: Some("*".into()),
            active_revision_id: revision,
            last_publish_at: None,
            desired_status: None,
            certificate_id: None,
            port_id: 0,
            created: Utc::now(),
        }
    }

    fn ids<'a, T: Keyed + 'a>(rows: impl Iterator<Item = &'a T>) -> Vec<Uuid> {
        rows.map(Keyed::key).collect()
    }

    /// Lookups follow inserts, updates and removals, keep insertion order, and the state file
    /// is exactly `EmulatorState`'s JSON.
    #[test]
    fn indexes_follow_the_rows() {
        let mut st = Store::default();
        let (a, b) = (app("a", "s"), app("b", "s"));
        let (a_id, b_id) = (a.id, b.id);
        st.insert_app(a);
        st.insert_app(b);
        assert_eq!(ids(st.apps_with_storage("s")), [a_id, b_id]);
        assert!(st.app_name_taken("a"));
        st.rename_app(a_id, "a2".into());
        assert!(!st.app_name_taken("a") && st.app_name_taken("a2"));

        let (r1, r2) = (
            Revision::new(Uuid::new_v4(), a_id, "1.0.0"),
            Revision::new(Uuid::new_v4(), a_id, "2.0.0"),
        );
        let (r1_id, r2_id) = (r1.id, r2.id);
        st.insert_revision(r1);
        st.insert_revision(r2);
        let (c1, c2, c3) = (
            channel(a_id, "one", Some(r1_id)),
            channel(a_id, "two", Some(r1_id)),
            channel(b_id, "three", Some(r2_id)),
        );
        let (c1_id, c2_id, c3_id) = (c1.id, c2.id, c3.id);
        for c in [c1, c2, c3] {
            st.insert_channel(c);
        }
        assert_eq!(ids(st.channels_of_app(a_id)), [c1_id, c2_id]);
        assert!(st.domain_taken("one.example.com", None));
        assert!(!st.domain_taken("one.example.com", Some(c1_id)));

        st.update_channel(c1_id, |c| c.domain = "uno.example.com".into());
        assert!(!st.domain_taken("one.example.com", None));
        assert!(st.domain_taken("uno.example.com", Some(c2_id)));
        for key in ["K", "L"] {
            st.insert_env(EnvVar {
                id: Uuid::new_v4(),
                channel_id: c2_id,
                key: key.into(),
                value: "v".into(),
            });
        }
        assert_eq!(st.env_of_channel(c2_id).count(), 2);

        let cert = Certificate {
            id: Uuid::new_v4(),
            name: "cert".into(),
            public_key: "p".into(),
            private_key: "k".into(),
        };
        let cert_id = cert.id;
        st.insert_certificate(cert);
        st.update_channel(c3_id, |c| c.certificate_id = Some(cert_id));
        assert_eq!(ids(st.channels_with_certificate(cert_id)), [c3_id]);

        // Round trip through the state file's shape.
        let json = serde_json::to_value(&st).expect("serialisable");
        let snapshot = st.snapshot();
        assert_eq!(json, serde_json::to_value(&snapshot).expect("serialisable"));
        let reloaded = Store::from(snapshot.clone());
        assert_eq!(reloaded.snapshot(), snapshot);
        assert_eq!(ids(reloaded.channels_of_app(a_id)), [c1_id, c2_id]);

        // Removing a revision unsets it where it was active; removing a certificate too.
        st.remove_revision(r1_id);
        assert_eq!(st.channel(c1_id).and_then(|c| c.active_revision_id), None);
        assert_eq!(
            st.channel(c3_id).and_then(|c| c.active_revision_id),
            Some(r2_id)
        );
        st.remove_certificate(cert_id);
        assert_eq!(st.channel(c3_id).and_then(|c| c.certificate_id), None);
        assert_eq!(st.channels_with_certificate(cert_id).count(), 0);

        // Removing an app takes its channels, their variables and its revisions along.
        assert_eq!(st.remove_app(a_id), [c1_id, c2_id]);
        assert_eq!(ids(st.channels().iter()), [c3_id]);
        assert_eq!(st.env_of_channel(c2_id).count(), 0);
        assert_eq!(st.snapshot().environment_variables, []);
        assert_eq!(ids(st.revisions().iter()), Vec::<Uuid>::new());
        assert_eq!(st.channel(c3_id).and_then(|c| c.active_revision_id), None);
        assert!(!st.domain_taken("uno.example.com", None));
        assert!(!st.app_name_taken("a2"));
        assert_eq!(ids(st.apps_with_storage("s")), [b_id]);
    }
}
