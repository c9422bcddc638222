//! The failure drills (issue 14) at the counts `./dev test` affords: every drill at least three
//! times (the API-server outage and the leader partition once), each attempt recovering within
//! the drills' deadline. Prints the table (recovery times are printed, not asserted);
//! `bench-drills` runs the full counts.

use whatsapp_tests::drills::{self, Counts};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_drill_recovers_every_time() {
    let counts = Counts::ci();
    let report = drills::run(&counts).await;
    println!("{report}");
    for row in &report.rows {
        assert_eq!(row.attempts, row.planned, "{}: attempts made\n{report}", row.drill);
        assert_eq!(row.successes(), row.attempts, "{}: attempts that recovered\n{report}", row.drill);
    }
    let drills: Vec<&str> = report.rows.iter().map(|r| r.drill).collect();
    assert_eq!(drills.len(), 8, "a row per drill: {drills:?}");
}
