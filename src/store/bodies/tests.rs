use super::sweep::Swept;
use super::*;

fn files(dir: &Path) -> Vec<u32> {
    listed(dir).unwrap().into_keys().collect()
}

/// `body` alone in a file of its own, closed: its pointer.
fn alone(w: &mut Writer, body: Vec<u8>) -> Vec<u8> {
    let p = w.put(body).unwrap();
    w.sync().unwrap();
    w.close();
    p
}

/// A writer of files in `dir`.
fn open(dir: &Path) -> (Arc<Bodies>, Writer) {
    Bodies::open(Some(dir.to_path_buf()), false).unwrap()
}

fn history() -> (sled::Db, sled::Tree) {
    let db = sled::Config::new().temporary(true).open().unwrap();
    let tree = db.open_tree("history").unwrap();
    (db, tree)
}

#[test]
fn bodies_read_back_across_runs_and_small_ones_stay_in_place() {
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("chunks");
    let (bodies, mut w) = open(&dir);
    assert!(!dir.exists(), "made with the first file");
    let small = vec![1u8; POINTER_LEN];
    assert_eq!(w.put(small.clone()).unwrap(), small);
    // More than a few runs' worth before one sync, of varied sizes.
    let all: Vec<Vec<u8>> = (0..700u32)
        .map(|i| (0..(100 + i * 7)).map(|j| (i ^ j) as u8).collect())
        .collect();
    assert!(all.iter().map(Vec::len).sum::<usize>() > 4 * WRITE_RUN);
    let ptrs: Vec<Vec<u8>> = all.iter().map(|b| w.put(b.clone()).unwrap()).collect();
    w.sync().unwrap();
    for (p, b) in ptrs.iter().zip(&all) {
        assert_eq!((p.len(), p[0]), (POINTER_LEN, POINTER));
        assert_eq!(&bodies.read(p).unwrap(), b);
    }
    let on_disk: u64 = listed(&dir).unwrap().values().sum();
    assert_eq!(bodies.bytes(), on_disk);
    // A pointer past the end of its file, or with another check, or cut.
    let last = ptrs.last().unwrap();
    let mut bad = last.clone();
    bad[12] = bad[12].wrapping_add(1);
    assert!(bodies.read(&bad).is_err());
    let mut bad = last.clone();
    bad[20] ^= 1;
    assert!(bodies.read(&bad).is_err());
    assert!(bodies.read(&last[..20]).is_err());
    // Without a directory, chunks stay where they are.
    let (_, mut w) = Bodies::open(None, false).unwrap();
    assert_eq!(w.put(all[5].clone()).unwrap(), all[5]);
}

#[test]
fn a_reopened_store_starts_a_file_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut w) = open(dir.path());
    let p = w.put(vec![1; 100]).unwrap();
    w.sync().unwrap();
    drop(w);
    let (bodies, mut w) = open(dir.path());
    let q = w.put(vec![2; 100]).unwrap();
    w.sync().unwrap();
    assert_eq!(files(dir.path()), vec![0, 1]);
    assert_eq!(bodies.read(&p).unwrap(), vec![1; 100]);
    assert_eq!(bodies.read(&q).unwrap(), vec![2; 100]);
}

#[test]
fn a_file_no_pointer_names_goes_at_the_second_sweep_and_no_sooner() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, tree) = history();
    let (bodies, mut w) = open(dir.path());
    // Three files: 0 named by the tree, 1 by nothing, 2 the current.
    let kept = alone(&mut w, vec![1; 100]);
    let _dropped = alone(&mut w, vec![2; 100]);
    let current = w.put(vec![3; 100]).unwrap();
    w.sync().unwrap();
    tree.insert("a", kept.clone()).unwrap();
    // Names it does not make are left alone.
    std::fs::write(dir.path().join("1.chunks"), b"x").unwrap();
    assert_eq!(files(dir.path()), vec![0, 1, 2]);

    let t0 = Instant::now();
    let gap = SWEEP_GAP;
    assert!(w.sweep_due(t0 + gap));
    assert!(!w.sweep_due(t0 + gap / 2), "too soon");
    assert_eq!(w.sweep(&[&tree], t0 + gap).unwrap(), Swept::default());
    assert_eq!(files(dir.path()), vec![0, 1, 2]);
    assert!(!w.sweep_due(t0 + gap * 3 / 2), "too soon after the last");
    assert!(w.sweep_due(t0 + gap * 2), "file 1 awaits its second look");
    let swept = w.sweep(&[&tree], t0 + gap * 2).unwrap();
    assert_eq!(
        swept,
        Swept {
            moved: 0,
            deleted: 1
        }
    );
    assert_eq!(files(dir.path()), vec![0, 2]);
    assert!(dir.path().join("1.chunks").exists());
    assert_eq!(bodies.read(&kept).unwrap(), vec![1; 100]);
    assert_eq!(bodies.read(&current).unwrap(), vec![3; 100]);
    assert!(!w.sweep_due(t0 + gap * 10), "nothing left to look for");

    // Once its last pointer is gone, file 0 goes the same way.
    tree.remove("a").unwrap();
    w.replaced();
    w.close();
    assert_eq!(w.sweep(&[&tree], t0 + gap * 3).unwrap().deleted, 0);
    assert_eq!(w.sweep(&[&tree], t0 + gap * 4).unwrap().deleted, 2);
    assert_eq!(files(dir.path()), Vec::<u32>::new());
    assert!(bodies.read(&kept).is_err());
    assert_eq!(bodies.bytes(), 0);
}

#[test]
fn the_live_bodies_of_a_file_mostly_dead_move_and_the_file_goes() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, tree) = history();
    let (bodies, mut w) = open(dir.path());
    let body = |i: u8| vec![i; 1000];
    for i in 0..10u8 {
        let p = w.put(body(i)).unwrap();
        tree.insert([i], p).unwrap();
    }
    w.sync().unwrap();
    w.close();
    // Six of ten dead: more than half.
    for i in 0..6u8 {
        tree.remove([i]).unwrap();
    }
    let t0 = Instant::now();
    let swept = w.sweep(&[&tree], t0 + SWEEP_GAP).unwrap();
    assert_eq!(
        swept,
        Swept {
            moved: 4,
            deleted: 0
        }
    );
    for i in 6..10u8 {
        let p = tree.get([i]).unwrap().unwrap();
        assert_eq!(
            Pointer::parse(&p).unwrap().file,
            1,
            "moved to the newest file"
        );
        assert_eq!(bodies.read(&p).unwrap(), body(i));
    }
    assert!(
        w.sweep_due(t0 + SWEEP_GAP * 2),
        "the emptied file is looked at again"
    );
    w.sweep(&[&tree], t0 + SWEEP_GAP * 2).unwrap();
    assert_eq!(w.sweep(&[&tree], t0 + SWEEP_GAP * 3).unwrap().deleted, 1);
    assert_eq!(files(dir.path()), vec![1]);

    // A file half alive or more stays as it is.
    for i in 6..8u8 {
        tree.remove([i]).unwrap();
    }
    w.close();
    assert_eq!(
        w.sweep(&[&tree], t0 + SWEEP_GAP * 4).unwrap(),
        Swept::default()
    );
}

#[test]
fn a_failed_sweep_waits_its_gap_like_any_other() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, tree) = history();
    let (_, mut w) = open(dir.path());
    alone(&mut w, vec![1; 100]);
    let t0 = Instant::now();
    w.sweep(&[&tree], t0 + SWEEP_GAP).unwrap();
    // File 0 is unnamed once; a pointer that cannot be read makes the next
    // sweep fail before it deletes anything.
    tree.insert("bad", vec![POINTER; 5]).unwrap();
    assert!(w.sweep(&[&tree], t0 + SWEEP_GAP * 2).is_err());
    assert_eq!(files(dir.path()), vec![0], "nothing deleted on a doubt");
    assert!(!w.sweep_due(t0 + SWEEP_GAP * 2 + Duration::from_secs(1)));
    assert!(w.sweep_due(t0 + SWEEP_GAP * 3));
}

#[test]
fn a_file_named_by_either_table_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, history) = history();
    let inbox = _db.open_tree("inbox").unwrap();
    let (bodies, mut w) = open(dir.path());
    let a = alone(&mut w, vec![1; 100]);
    let b = alone(&mut w, vec![2; 100]);
    history.insert("a", a.clone()).unwrap();
    inbox.insert("b", b.clone()).unwrap();
    let t0 = Instant::now();
    for k in 1..=3 {
        let swept = w.sweep(&[&history, &inbox], t0 + SWEEP_GAP * k).unwrap();
        assert_eq!(swept, Swept::default());
    }
    assert_eq!(files(dir.path()), vec![0, 1]);
    assert_eq!(bodies.read(&b).unwrap(), vec![2; 100]);
}

#[test]
fn a_move_that_fails_does_not_stop_the_deletions() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, tree) = history();
    let (_, mut w) = open(dir.path());
    // File 0 mostly dead, one of its live bodies damaged; file 1 unnamed.
    for i in 0..10u8 {
        let p = w.put(vec![i; 1000]).unwrap();
        if i >= 7 {
            tree.insert([i], p).unwrap();
        }
    }
    w.sync().unwrap();
    w.close();
    alone(&mut w, vec![1; 100]);
    let f0 = dir.path().join("00000000.chunks");
    let mut bytes = std::fs::read(&f0).unwrap();
    bytes[8 * 1000 + 5] ^= 1;
    std::fs::write(&f0, bytes).unwrap();
    let t0 = Instant::now();
    assert!(w.sweep(&[&tree], t0 + SWEEP_GAP).is_err());
    // The readable bodies moved out of file 0; the damaged one did not.
    for i in [7u8, 9] {
        let p = tree.get([i]).unwrap().unwrap();
        assert_eq!(Pointer::parse(&p).unwrap().file, 2);
    }
    let p = tree.get([8u8]).unwrap().unwrap();
    assert_eq!(Pointer::parse(&p).unwrap().file, 0);
    assert!(w.sweep(&[&tree], t0 + SWEEP_GAP * 2).is_err());
    assert_eq!(files(dir.path()), vec![0, 2], "file 1 went all the same");
}
