use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use whatsapp_crds::SessionState;

use super::*;
use crate::tracker::Report;

const PACING: Pacing = Pacing {
    min: Duration::from_millis(30),
    max: Duration::from_millis(60),
    retry: Duration::from_millis(40),
};

fn contact(number: Option<&str>, lid: Option<&str>, name: Option<&str>, push: Option<&str>) -> Contact {
    Contact {
        number: number.map(String::from),
        lid: lid.map(String::from),
        name: name.map(String::from),
        push_name: push.map(String::from),
        ..Contact::default()
    }
}

/// What the stand-in page was asked: each existence query's number and when it started.
#[derive(Default, Clone)]
struct Page {
    queries: Arc<Mutex<Vec<(String, Instant)>>>,
    busy: Arc<AtomicUsize>,
    most_busy: Arc<AtomicUsize>,
    /// Numbers whose first query fails (the page threw).
    flaky: Arc<Mutex<Vec<String>>>,
    contacts: Arc<Mutex<Vec<Contact>>>,
}

impl Page {
    fn queried(&self) -> Vec<String> {
        self.queries.lock().unwrap().iter().map(|(n, _)| n.clone()).collect()
    }

    /// Answers the driver's commands as WhatsApp Web would: numbers starting with 000 are not
    /// on WhatsApp; each query takes a moment and runs on its own, so overlapping queries show.
    fn serve(&self, mut commands: mpsc::Receiver<Command>) {
        let page = self.clone();
        tokio::spawn(async move {
            while let Some(command) = commands.recv().await {
                let page = page.clone();
                tokio::spawn(async move { page.answer(command).await });
            }
        });
    }

    async fn answer(&self, command: Command) {
        match command {
            Command::CheckNumber { number, reply } => {
                self.queries.lock().unwrap().push((number.clone(), Instant::now()));
                let busy = self.busy.fetch_add(1, Ordering::SeqCst) + 1;
                self.most_busy.fetch_max(busy, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                self.busy.fetch_sub(1, Ordering::SeqCst);
                let mut flaky = self.flaky.lock().unwrap();
                if let Some(at) = flaky.iter().position(|n| *n == number) {
                    flaky.remove(at);
                    let _ = reply.send(Err("Evaluation failed: socket closed".into()));
                    return;
                }
                let exists = !number.starts_with("000");
                let lid = exists.then(|| format!("9{number}"));
                let _ = reply.send(Ok(Existence { exists, lid }));
            }
            Command::Contacts { reply } => {
                let _ = reply.send(Ok(self.contacts.lock().unwrap().clone()));
            }
            Command::Logout { reply } => {
                let _ = reply.send(Ok(()));
            }
            Command::DownloadMedia { reply, .. } => {
                let _ = reply.send(Err("no media in this page".into()));
            }
        }
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    outbox: Outbox,
    directory: Directory,
    page: Page,
    ready: watch::Sender<Report>,
}

fn report(state: SessionState) -> Report {
    Report::new(state, "Test", "test")
}

/// A directory on a fresh outbox file, its checker running, the page answering.
fn fixture(state: SessionState) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&dir.path().join("outbox.redb"), 100).unwrap();
    let (commands, received) = mpsc::channel(16);
    let directory = Directory::open(outbox.clone(), commands, Metrics::default()).unwrap();
    let page = Page::default();
    page.serve(received);
    let (ready, reports) = watch::channel(report(state));
    tokio::spawn(directory.clone().run_checks(reports, PACING));
    Fixture { _dir: dir, outbox, directory, page, ready }
}

/// Waits until `n` checks were stored since the start (a guard, not a pace: it returns as soon
/// as they are).
async fn stored(directory: &Directory, n: u64) {
    let mut stored = directory.checks.stored();
    tokio::time::timeout(Duration::from_secs(10), stored.wait_for(|s| *s >= n))
        .await
        .expect("the checks in time")
        .expect("the checker runs");
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn one_person_listed_by_number_and_by_lid_is_one_contact_and_the_list_is_by_name() {
    let merged = merge(vec![
        contact(Some("5491100000002"), None, Some("Zoe"), None),
        contact(Some("5491100000001"), None, Some("ana"), None),
        contact(None, Some("900000000000001"), None, Some("Ana P")),
        // The page knows the LID of the phone-number contact: the same person.
        contact(Some("5491100000001"), Some("900000000000001"), None, None),
        Contact { is_my_contact: true, ..contact(None, Some("900000000000001"), None, None) },
        contact(None, None, Some("no id"), None),
        contact(Some("5491100000003"), None, None, Some("Bea")),
    ]);
    assert_eq!(merged.len(), 3, "{merged:?}");
    assert_eq!(
        merged[0],
        Contact {
            number: Some("5491100000001".into()),
            lid: Some("900000000000001".into()),
            name: Some("ana".into()),
            push_name: Some("Ana P".into()),
            is_business: false,
            is_my_contact: true,
        }
    );
    let names: Vec<_> = merged.iter().map(|c| c.name.clone().or(c.push_name.clone())).collect();
    assert_eq!(names, [Some("ana".into()), Some("Bea".into()), Some("Zoe".into())]);
}

#[tokio::test]
async fn a_sync_replaces_the_last_one_and_pages_by_cursor() {
    let f = fixture(SessionState::Ready);
    assert_eq!(f.directory.contacts(None, 10).unwrap().synced_at, None, "never synced");
    *f.page.contacts.lock().unwrap() = (1..=5)
        .map(|i| contact(Some(&format!("549110000000{i}")), None, Some(&format!("Name {i}")), None))
        .collect();
    let (count, at) = f.directory.sync_contacts().await.unwrap();
    assert_eq!(count, 5);
    let first = f.directory.contacts(None, 2).unwrap();
    assert_eq!((first.contacts.len(), first.synced_at), (2, Some(at)));
    let mut all = first.contacts;
    let mut cursor = first.next_cursor;
    while let Some(c) = cursor {
        let page = f.directory.contacts(Some(c), 2).unwrap();
        all.extend(page.contacts);
        cursor = page.next_cursor;
    }
    let names: Vec<_> = all.iter().map(|c| c.name.clone().unwrap()).collect();
    assert_eq!(names, ["Name 1", "Name 2", "Name 3", "Name 4", "Name 5"]);

    // The next sync is the whole address book again: what is gone from it goes.
    *f.page.contacts.lock().unwrap() = vec![contact(Some("5491100000009"), None, Some("Only"), None)];
    assert_eq!(f.directory.sync_contacts().await.unwrap().0, 1);
    let page = f.directory.contacts(None, 100).unwrap();
    assert_eq!((page.contacts.len(), page.next_cursor), (1, None));
    assert_eq!(page.contacts[0].name.as_deref(), Some("Only"));
    // And it is on the volume: another directory on the same file reads it.
    let (commands, _) = mpsc::channel(1);
    let again = Directory::open(f.outbox.clone(), commands, Metrics::default()).unwrap();
    assert_eq!(again.contacts(None, 100).unwrap().contacts, page.contacts);
}

#[tokio::test]
async fn numbers_are_checked_once_each_one_at_a_time_paced_then_answered_from_the_store() {
    let f = fixture(SessionState::Ready);
    let given = strings(&["+54 9 11 5555-0001", "0001112223", "12", "5491155550001", "5491155550002"]);
    let results = f.directory.check(&given, Duration::from_secs(10)).await.unwrap();
    let statuses: Vec<_> = results.iter().map(|r| r.status).collect();
    use NumberStatus::*;
    assert_eq!(statuses, [OnWhatsapp, NotOnWhatsapp, Invalid, OnWhatsapp, OnWhatsapp]);
    assert_eq!(results[0].number, "+54 9 11 5555-0001", "answered as given");
    assert_eq!(results[0].lid.as_deref(), Some("95491155550001"));
    assert!(results[0].checked_at.is_some() && results[2].checked_at.is_none());
    assert_eq!((results[1].lid.as_deref(), results[2].lid.as_deref()), (None, None));

    // Each distinct valid number asked once (the invalid one never), one at a time, paced.
    let queries = f.page.queries.lock().unwrap().clone();
    let mut asked: Vec<_> = queries.iter().map(|(n, _)| n.as_str()).collect();
    asked.sort_unstable();
    assert_eq!(asked, ["0001112223", "5491155550001", "5491155550002"]);
    assert_eq!(f.page.most_busy.load(Ordering::SeqCst), 1, "never two queries at once");
    let counted = f.directory.metrics.render();
    assert!(counted.contains(r#"whatsapp_session_number_checks_total{result="on_whatsapp"} 2"#), "{counted}");
    for pair in queries.windows(2) {
        assert!(pair[1].1 - pair[0].1 >= PACING.min, "a gap of at least {:?} between queries", PACING.min);
    }

    // Asked again: the same answers, from the store; WhatsApp is not asked again.
    let again = f.directory.check(&given, Duration::from_secs(10)).await.unwrap();
    assert_eq!(again, results);
    assert_eq!(f.page.queried().len(), 3);
}

#[tokio::test]
async fn numbers_not_reached_in_time_are_pending_and_checked_in_the_background() {
    let f = fixture(SessionState::QrRequired);
    let given = strings(&["5491155550001", "5491155550002", "bad"]);
    let results = f.directory.check(&given, Duration::from_millis(50)).await.unwrap();
    let statuses: Vec<_> = results.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [NumberStatus::Pending, NumberStatus::Pending, NumberStatus::Invalid]);
    assert!(f.page.queried().is_empty(), "nothing is asked while the session is not READY");

    // Once READY, the line is worked through without anyone waiting; a later request finds it.
    f.ready.send_replace(report(SessionState::Ready));
    stored(&f.directory, 2).await;
    let later = f.directory.check(&given[..2], Duration::ZERO).await.unwrap();
    assert!(later.iter().all(|r| r.status == NumberStatus::OnWhatsapp), "{later:?}");
    assert_eq!(f.page.queried(), ["5491155550001", "5491155550002"], "in the order given");
}

#[tokio::test]
async fn a_failed_check_is_tried_again_and_a_day_old_one_is_asked_again() {
    let f = fixture(SessionState::Ready);
    f.page.flaky.lock().unwrap().push("5491155550001".into());
    let results = f.directory.check(&strings(&["5491155550001"]), Duration::from_secs(10)).await.unwrap();
    assert_eq!(results[0].status, NumberStatus::OnWhatsapp);
    assert_eq!(f.page.queried(), ["5491155550001", "5491155550001"], "asked again after the failure");

    // A check older than a day is not trusted: asked again, and the old one is forgotten.
    let old = Checked {
        exists: false,
        lid: None,
        checked_at: Timestamp::now() - FRESH_FOR - Duration::from_secs(60),
    };
    f.outbox.database(|db| store::record(db, "5491155550009", &old)).unwrap();
    let results = f.directory.check(&strings(&["5491155550009"]), Duration::from_secs(10)).await.unwrap();
    assert_eq!(results[0].status, NumberStatus::OnWhatsapp);
    assert_eq!(f.page.queried().len(), 3);
    let old = Checked { checked_at: Timestamp::now() - FRESH_FOR * 2, ..old };
    f.outbox.database(|db| store::record(db, "5491155550008", &old)).unwrap();
    let before = Timestamp::now() - FRESH_FOR;
    assert_eq!(f.outbox.database(|db| store::forget_checks(db, before, 100)).unwrap(), 1);
    let left =
        f.outbox.database(|db| store::checked(db, &["5491155550008", "5491155550009"], old.checked_at));
    assert_eq!(left.unwrap().len(), 1, "only the fresh one is left");
}

#[test]
fn the_line_puts_the_latest_request_first_and_stays_bounded() {
    let checks = checker::Checks::default();
    checks.first(&strings(&["1", "2", "3"]));
    checks.first(&strings(&["3", "4"]));
    let many: Vec<String> = (0..MAX_QUEUED + 10).map(|i| format!("n{i}")).collect();
    assert_eq!(checks.waiting(), 4);
    checks.first(&many);
    assert_eq!(checks.waiting(), MAX_QUEUED, "bounded: the oldest in line drop out");
}

#[test]
fn gaps_are_random_within_the_pacing() {
    let gaps: Vec<Duration> = (0..200).map(|_| Pacing::WHATSAPP.gap()).collect();
    assert!(gaps.iter().all(|g| (Pacing::WHATSAPP.min..=Pacing::WHATSAPP.max).contains(g)));
    assert!(gaps.iter().any(|g| *g != gaps[0]), "not a fixed beat");
}
