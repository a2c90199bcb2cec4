//! Persistent reservations through the target, byte for byte, from
//! several I_T nexuses.

use vscsi_protocol::cdb::Cdb;
use vscsi_protocol::status;

use crate::scsi::io::{SliceDataOut, VecDataIn};
use crate::scsi::testutil::{bus_with, triple};
use crate::scsi::{CommandResult, LunOptions, Nexus, Request, ScsiBus, Target};

fn nexus(name: &str, port: u16) -> Nexus {
    Nexus::controller(name, port).for_connection(1)
}

fn exec(t: &Target, n: &Nexus, cdb: &[u8], out: &[u8]) -> (CommandResult, Vec<u8>) {
    let mut din = VecDataIn::new(4096);
    let req = Request {
        cdb,
        tag: 1,
        task_attr: 0,
        nexus: n,
    };
    let r = t.execute(0, &req, &mut din, &SliceDataOut(out));
    let data = din.as_slice()[..r.data_in_len].to_vec();
    (r, data)
}

fn pr_in(t: &Target, n: &Nexus, sa: u8) -> Vec<u8> {
    let (r, d) = exec(t, n, &[0x5E, sa, 0, 0, 0, 0, 0, 0x10, 0x00, 0], &[]);
    assert!(r.is_good(), "{r:?}");
    d
}

fn list(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
    let mut v = vec![0u8; 24];
    v[0..8].copy_from_slice(&key.to_be_bytes());
    v[8..16].copy_from_slice(&sa_key.to_be_bytes());
    v[20] = flags;
    v
}

fn pr_out(t: &Target, n: &Nexus, sa: u8, rtype: u8, param: &[u8]) -> CommandResult {
    let len = (param.len() as u32).to_be_bytes();
    let cdb = [0x5F, sa, rtype, 0, 0, len[0], len[1], len[2], len[3], 0];
    exec(t, n, &cdb, param).0
}

fn register(t: &Target, n: &Nexus, key: u64) -> CommandResult {
    pr_out(t, n, 0x00, 0, &list(0, key, 0))
}

fn write(t: &Target, n: &Nexus) -> CommandResult {
    exec(t, n, Cdb::write_10(0, 1, false).as_bytes(), &[0xAB; 512]).0
}

fn read(t: &Target, n: &Nexus) -> CommandResult {
    exec(t, n, Cdb::read_10(0, 1, false).as_bytes(), &[]).0
}

/// A bus whose LU has no POWER ON unit attention pending.
fn quiet_bus() -> (ScsiBus, tempfile::NamedTempFile) {
    bus_with(
        16,
        LunOptions {
            power_on_ua: false,
            ..Default::default()
        },
    )
}

fn is_conflict(r: &CommandResult) -> bool {
    r.status == status::RESERVATION_CONFLICT && r.sense().is_empty()
}

#[test]
fn register_and_read_keys_byte_exact_with_prgeneration() {
    let (bus, _f) = quiet_bus();
    let t = bus.target(0).unwrap();
    let (a, b) = (nexus("a", 1), nexus("b", 2));
    assert_eq!(pr_in(t, &a, 0), [0, 0, 0, 0, 0, 0, 0, 0]);
    assert!(register(t, &a, 0x0102_0304_0506_0708).is_good());
    assert!(register(t, &b, 0xB).is_good());
    assert_eq!(
        pr_in(t, &b, 0),
        [0, 0, 0, 2, 0, 0, 0, 16, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0x0B]
    );
    // A registered nexus registering with the wrong key: conflict, no change.
    assert!(is_conflict(&register(t, &a, 0x99)));
    // An unregistered nexus with a non-zero RESERVATION KEY: conflict.
    let c = nexus("c", 3);
    assert!(is_conflict(&pr_out(t, &c, 0, 0, &list(5, 6, 0))));
    // Unregistered, SERVICE ACTION RESERVATION KEY 0: GOOD, nothing.
    assert!(register(t, &c, 0).is_good());
    assert_eq!(&pr_in(t, &a, 0)[..8], &[0, 0, 0, 2, 0, 0, 0, 16]);
    // Changing a key, then unregistering: generation 3, then 4.
    assert!(pr_out(t, &b, 0, 0, &list(0xB, 0xC, 0)).is_good());
    assert_eq!(&pr_in(t, &a, 0)[..4], &[0, 0, 0, 3]);
    assert!(pr_out(t, &b, 0, 0, &list(0xC, 0, 0)).is_good());
    assert_eq!(
        pr_in(t, &a, 0)[..16],
        [0, 0, 0, 4, 0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]
    );
    // REGISTER AND IGNORE EXISTING KEY: whatever the RESERVATION KEY.
    assert!(pr_out(t, &a, 0x06, 0, &list(0xDEAD, 0x77, 0)).is_good());
    assert_eq!(pr_in(t, &a, 0)[8..16], 0x77u64.to_be_bytes());
    assert_eq!(&pr_in(t, &a, 0)[..4], &[0, 0, 0, 5]);
}

#[test]
fn reserve_read_reservation_and_release_byte_exact() {
    let (bus, _f) = quiet_bus();
    let t = bus.target(0).unwrap();
    let (a, b) = (nexus("a", 1), nexus("b", 2));
    assert_eq!(pr_in(t, &a, 1), [0, 0, 0, 0, 0, 0, 0, 0]);
    // RESERVE needs a registration.
    assert!(is_conflict(&pr_out(t, &a, 1, 1, &list(0xA, 0, 0))));
    register(t, &a, 0xA);
    register(t, &b, 0xB);
    // With the wrong key: conflict.
    assert!(is_conflict(&pr_out(t, &a, 1, 1, &list(0xB, 0, 0))));
    assert!(pr_out(t, &a, 1, 5, &list(0xA, 0, 0)).is_good());
    let want = [
        0, 0, 0, 2, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0x0A, 0, 0, 0, 0, 0, 0x05, 0, 0,
    ];
    assert_eq!(pr_in(t, &b, 1), want);
    // RESERVE doesn't count in PRgeneration; the same RESERVE again is GOOD;
    // another type from the holder, or any RESERVE from b, conflicts.
    assert!(pr_out(t, &a, 1, 5, &list(0xA, 0, 0)).is_good());
    assert!(is_conflict(&pr_out(t, &a, 1, 1, &list(0xA, 0, 0))));
    assert!(is_conflict(&pr_out(t, &b, 1, 5, &list(0xB, 0, 0))));
    // RELEASE by a non-holder: GOOD, nothing; with the wrong type: 5/26/04.
    assert!(pr_out(t, &b, 2, 5, &list(0xB, 0, 0)).is_good());
    assert_eq!(pr_in(t, &b, 1), want);
    let r = pr_out(t, &a, 2, 1, &list(0xA, 0, 0));
    assert_eq!(triple(&r), (5, 0x26, 0x04));
    // Released: b (registrant of a registrants-only type) gets 2A/04.
    assert!(pr_out(t, &a, 2, 5, &list(0xA, 0, 0)).is_good());
    assert_eq!(pr_in(t, &a, 1), [0, 0, 0, 2, 0, 0, 0, 0]);
    assert_eq!(triple(&read(t, &b)), (6, 0x2A, 0x04));
    assert!(read(t, &b).is_good());
    assert!(read(t, &a).is_good());
    // An all-registrants reservation reports key 0.
    assert!(pr_out(t, &b, 1, 8, &list(0xB, 0, 0)).is_good());
    assert_eq!(
        &pr_in(t, &a, 1)[8..24],
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0]
    );
}

#[test]
fn writes_from_other_nexuses_conflict_per_type() {
    // (type, registered non-holder b may write, b may read,
    //  unregistered c may write, c may read)
    for (rtype, b_w, b_r, c_w, c_r) in [
        (1, false, true, false, true),
        (3, false, false, false, false),
        (5, true, true, false, true),
        (6, true, true, false, false),
        (7, true, true, false, true),
        (8, true, true, false, false),
    ] {
        let (bus, _f) = quiet_bus();
        let t = bus.target(0).unwrap();
        let (a, b, c) = (nexus("a", 1), nexus("b", 2), nexus("c", 3));
        register(t, &a, 0xA);
        register(t, &b, 0xB);
        assert!(pr_out(t, &a, 1, rtype, &list(0xA, 0, 0)).is_good());
        assert!(write(t, &a).is_good(), "type {rtype}");
        assert!(read(t, &a).is_good(), "type {rtype}");
        assert_eq!(write(t, &b).is_good(), b_w, "type {rtype}");
        assert_eq!(is_conflict(&write(t, &b)), !b_w, "type {rtype}");
        assert_eq!(read(t, &b).is_good(), b_r, "type {rtype}");
        assert_eq!(write(t, &c).is_good(), c_w, "type {rtype}");
        assert_eq!(is_conflict(&write(t, &c)), !c_w, "type {rtype}");
        assert_eq!(read(t, &c).is_good(), c_r, "type {rtype}");
        // INQUIRY, TEST UNIT READY, READ CAPACITY, PR IN: always.
        for cdb in [
            Cdb::inquiry(false, 0, 36),
            Cdb::test_unit_ready(),
            Cdb::read_capacity_10(),
        ] {
            assert!(exec(t, &c, cdb.as_bytes(), &[]).0.is_good(), "type {rtype}");
        }
        pr_in(t, &c, 0);
        // SYNCHRONIZE CACHE is a write; MODE SENSE reads.
        let sync = exec(t, &c, Cdb::synchronize_cache_10(0, 0).as_bytes(), &[]).0;
        assert!(is_conflict(&sync), "type {rtype}");
    }
}

#[test]
fn preempt_removes_the_holder_and_tells_it() {
    let (bus, _f) = quiet_bus();
    let t = bus.target(0).unwrap();
    let (a, b) = (nexus("a", 1), nexus("b", 2));
    register(t, &a, 0xA);
    register(t, &b, 0xB);
    assert!(pr_out(t, &a, 1, 3, &list(0xA, 0, 0)).is_good());
    assert!(is_conflict(&write(t, &b)));
    // PREEMPT of a key nobody has: conflict; of key 0 without an
    // all-registrants reservation: invalid field in the parameter list.
    assert!(is_conflict(&pr_out(t, &b, 4, 1, &list(0xB, 0x55, 0))));
    assert_eq!(triple(&pr_out(t, &b, 4, 1, &list(0xB, 0, 0))), (5, 0x26, 0));
    // b preempts a: b holds a WRITE EXCLUSIVE, a is unregistered.
    assert!(pr_out(t, &b, 5, 1, &list(0xB, 0xA, 0)).is_good());
    assert_eq!(pr_in(t, &b, 1)[8..16], 0xBu64.to_be_bytes());
    assert_eq!(pr_in(t, &b, 1)[21], 1);
    assert_eq!(
        pr_in(t, &b, 0)[..16],
        [0, 0, 0, 3, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0x0B]
    );
    // a's next command: REGISTRATIONS PREEMPTED, then conflict for writes.
    assert_eq!(triple(&write(t, &a)), (6, 0x2A, 0x05));
    assert!(is_conflict(&write(t, &a)));
    assert!(read(t, &a).is_good());
    assert!(write(t, &b).is_good());
}

#[test]
fn preempt_of_all_registrants_with_key_zero_and_clear() {
    let (bus, _f) = quiet_bus();
    let t = bus.target(0).unwrap();
    let (a, b, c) = (nexus("a", 1), nexus("b", 2), nexus("c", 3));
    register(t, &a, 0xA);
    register(t, &b, 0xB);
    register(t, &c, 0xC);
    assert!(pr_out(t, &a, 1, 7, &list(0xA, 0, 0)).is_good());
    assert!(write(t, &c).is_good());
    assert!(pr_out(t, &c, 4, 3, &list(0xC, 0, 0)).is_good());
    assert_eq!(
        pr_in(t, &c, 1)[8..24],
        [0, 0, 0, 0, 0, 0, 0, 0x0C, 0, 0, 0, 0, 0, 3, 0, 0]
    );
    for n in [&a, &b] {
        assert_eq!(triple(&read(t, n)), (6, 0x2A, 0x05));
        assert!(is_conflict(&read(t, n)));
    }
    // CLEAR: everything goes, the other registrants get 2A/03.
    register(t, &a, 0xA2);
    assert!(pr_out(t, &c, 3, 0, &list(0xC, 0, 0)).is_good());
    assert_eq!(&pr_in(t, &c, 0)[4..8], &[0, 0, 0, 0]);
    assert_eq!(&pr_in(t, &c, 1)[4..8], &[0, 0, 0, 0]);
    assert_eq!(triple(&read(t, &a)), (6, 0x2A, 0x03));
    assert!(write(t, &a).is_good());
    assert!(read(t, &c).is_good());
}

#[test]
fn report_capabilities_and_read_full_status_byte_exact() {
    let (bus, _f) = quiet_bus();
    let t = bus.target(0).unwrap();
    let (a, b) = (nexus("a", 1), nexus("b", 2));
    // CRH, PTPL_C; TMV, ALLOW COMMANDS 011b; every type.
    assert_eq!(pr_in(t, &a, 2), [0, 8, 0x11, 0xB0, 0xEA, 0x01, 0, 0]);
    register(t, &a, 0x1122_3344_5566_7788);
    register(t, &b, 0xB);
    pr_out(t, &a, 1, 1, &list(0x1122_3344_5566_7788, 0, 0));
    let d = pr_in(t, &b, 3);
    let mut want = vec![0, 0, 0, 2, 0, 0, 0, 96];
    // a: key big-endian, R_HOLDER, type 1, target port 1, 24-byte TransportID.
    want.extend_from_slice(&[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
    want.extend_from_slice(&[0, 0, 0, 0, 0x01, 0x01, 0, 0, 0, 0, 0, 1, 0, 0, 0, 24]);
    want.extend_from_slice(&[5, 0, 0, 20]);
    want.extend_from_slice(b"vhost-user:a\0\0\0\0\0\0\0\0");
    want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x0B]);
    want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 24]);
    want.extend_from_slice(&[5, 0, 0, 20]);
    want.extend_from_slice(b"vhost-user:b\0\0\0\0\0\0\0\0");
    assert_eq!(d, want);
    // ALLOCATION LENGTH truncates.
    let (r, d) = exec(t, &a, &[0x5E, 3, 0, 0, 0, 0, 0, 0, 10, 0], &[]);
    assert!(r.is_good());
    assert_eq!(d, want[..10]);
    // An unknown service action.
    let (r, _) = exec(t, &a, &[0x5E, 4, 0, 0, 0, 0, 0, 0, 10, 0], &[]);
    assert_eq!(triple(&r), (5, 0x24, 0));
}

#[test]
fn parameter_lists_and_cdbs_are_checked() {
    let (bus, _f) = quiet_bus();
    let t = bus.target(0).unwrap();
    let a = nexus("a", 1);
    // Not 24 bytes.
    let r = pr_out(t, &a, 0, 0, &list(0, 1, 0)[..20]);
    assert_eq!(triple(&r), (5, 0x1A, 0));
    // SPEC_I_PT and ALL_TG_PT are not supported.
    for flags in [0x08, 0x04] {
        let r = pr_out(t, &a, 0, 0, &list(0, 1, flags));
        assert_eq!(triple(&r), (5, 0x26, 0), "{flags:#x}");
    }
    register(t, &a, 1);
    // A bad TYPE or SCOPE in RESERVE.
    assert_eq!(triple(&pr_out(t, &a, 1, 2, &list(1, 0, 0))), (5, 0x24, 0));
    assert_eq!(
        triple(&pr_out(t, &a, 1, 0x11, &list(1, 0, 0))),
        (5, 0x24, 0)
    );
    // An unknown service action.
    assert_eq!(triple(&pr_out(t, &a, 8, 0, &list(1, 0, 0))), (5, 0x24, 0));
    // A Data-Out buffer shorter than the list.
    let cdb = [0x5F, 0, 0, 0, 0, 0, 0, 0, 24, 0];
    let (r, _) = exec(t, &a, &cdb, &[0; 8]);
    assert!(r.is_overrun());
}

#[test]
fn register_and_move_hands_the_reservation_over() {
    let (bus, _f) = quiet_bus();
    let t = bus.target(0).unwrap();
    let (a, b) = (nexus("a", 1), nexus("b", 2));
    register(t, &a, 0xA);
    pr_out(t, &a, 1, 3, &list(0xA, 0, 0));
    let tid = b.initiator().transport_id();
    let mut l = vec![0u8; 24];
    l[0..8].copy_from_slice(&0xAu64.to_be_bytes());
    l[8..16].copy_from_slice(&0xB0u64.to_be_bytes());
    l[17] = 0x02; // UNREG
    l[18..20].copy_from_slice(&2u16.to_be_bytes());
    l[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
    l.extend_from_slice(tid);
    assert!(pr_out(t, &a, 7, 0, &l).is_good());
    assert_eq!(pr_in(t, &b, 1)[8..16], 0xB0u64.to_be_bytes());
    assert_eq!(
        pr_in(t, &b, 0)[..16],
        [0, 0, 0, 2, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0xB0]
    );
    assert!(write(t, &b).is_good());
    assert!(is_conflict(&read(t, &a)));
    // Moving to itself is refused.
    let mut own = l.clone();
    own[0..8].copy_from_slice(&0xB0u64.to_be_bytes());
    assert_eq!(triple(&pr_out(t, &b, 7, 0, &own)), (5, 0x26, 0));
}

#[test]
fn spc2_reservations_and_their_interaction_with_persistent_ones() {
    let (bus, _f) = quiet_bus();
    let t = bus.target(0).unwrap();
    let (a, b) = (nexus("a", 1), nexus("b", 2));
    let reserve6 = [0x16, 0, 0, 0, 0, 0];
    let release6 = [0x17, 0, 0, 0, 0, 0];
    assert!(exec(t, &a, &reserve6, &[]).0.is_good());
    assert!(exec(t, &a, &reserve6, &[]).0.is_good());
    assert!(is_conflict(&exec(t, &b, &reserve6, &[]).0));
    assert!(is_conflict(&read(t, &b)));
    assert!(is_conflict(
        &exec(t, &b, Cdb::test_unit_ready().as_bytes(), &[]).0
    ));
    assert!(exec(t, &b, Cdb::inquiry(false, 0, 36).as_bytes(), &[])
        .0
        .is_good());
    assert!(is_conflict(&register(t, &b, 1)));
    // RELEASE from b: GOOD, nothing happens.
    assert!(exec(t, &b, &release6, &[]).0.is_good());
    assert!(is_conflict(&write(t, &b)));
    assert!(write(t, &a).is_good());
    // An I_T NEXUS RESET from b leaves a's reservation; a LUN reset drops it.
    t.nexus_reset(&b);
    assert_eq!(triple(&read(t, &b)), (6, 0x29, 0));
    assert!(is_conflict(&read(t, &b)));
    t.lun(0).unwrap().lun_reset();
    assert_eq!(triple(&read(t, &b)), (6, 0x29, 0));
    assert!(read(t, &b).is_good());
    // RESERVE(10), then the loss of a's nexus drops it.
    assert!(exec(t, &a, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[])
        .0
        .is_good());
    assert!(is_conflict(&read(t, &b)));
    bus.nexus_lost(&a);
    assert!(read(t, &b).is_good());
    // Third-party reservations are not supported.
    let r = exec(t, &a, &[0x56, 0x10, 0, 0, 0, 0, 0, 0, 0, 0], &[]).0;
    assert_eq!(triple(&r), (5, 0x24, 0));
    // With registrations (CRH = 1): RESERVE from the PR holder is GOOD and
    // changes nothing; from an unregistered nexus, conflict.
    register(t, &a, 0xA);
    assert!(is_conflict(&exec(t, &a, &reserve6, &[]).0));
    pr_out(t, &a, 1, 1, &list(0xA, 0, 0));
    assert!(exec(t, &a, &reserve6, &[]).0.is_good());
    assert!(exec(t, &a, &release6, &[]).0.is_good());
    assert!(is_conflict(&exec(t, &b, &reserve6, &[]).0));
    assert!(is_conflict(&exec(t, &b, &release6, &[]).0));
    assert_eq!(pr_in(t, &b, 1)[21], 1);
    // Persistent reservations survive resets and nexus loss.
    t.lun(0).unwrap().lun_reset();
    t.nexus_reset(&a);
    bus.nexus_lost(&a);
    let _ = read(t, &b);
    assert_eq!(pr_in(t, &b, 1)[21], 1);
    assert!(is_conflict(&write(t, &b)));
}

#[test]
fn aptpl_state_survives_reopening_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0u8; 8 * 512]).unwrap();
    let opts = LunOptions {
        power_on_ua: false,
        ..Default::default()
    };
    let (a, b) = (nexus("a", 1), nexus("b", 2));
    {
        let lu = crate::scsi::LogicalUnit::open(&image, opts.clone()).unwrap();
        let mut bus = ScsiBus::new();
        bus.add_lun(0, 0, std::sync::Arc::new(lu)).unwrap();
        let t = bus.target(0).unwrap();
        assert!(pr_out(t, &a, 0, 0, &list(0, 0xA, 0x01)).is_good());
        assert!(register(t, &b, 0xB).is_good());
        assert!(pr_out(t, &a, 1, 6, &list(0xA, 0, 0)).is_good());
        assert_eq!(pr_in(t, &a, 2)[3] & 1, 0, "b's REGISTER had APTPL=0");
        // b's APTPL=0 switched it off: a registers again with APTPL=1.
        assert!(pr_out(t, &a, 0, 0, &list(0xA, 0xA, 0x01)).is_good());
        assert_eq!(pr_in(t, &a, 2)[3] & 1, 1);
        assert!(dir.path().join("disk.img.pr").exists());
    }
    let lu = crate::scsi::LogicalUnit::open(&image, opts).unwrap();
    let mut bus = ScsiBus::new();
    bus.add_lun(0, 0, std::sync::Arc::new(lu)).unwrap();
    let t = bus.target(0).unwrap();
    let keys = pr_in(t, &b, 0);
    assert_eq!(keys[..8], [0, 0, 0, 3, 0, 0, 0, 16]);
    assert_eq!(pr_in(t, &b, 1)[21], 6);
    assert!(write(t, &a).is_good());
    assert!(write(t, &b).is_good());
    assert!(is_conflict(&write(t, &nexus("c", 3))));
    // APTPL=0 removes the file.
    assert!(pr_out(t, &a, 0, 0, &list(0xA, 0xA, 0)).is_good());
    assert!(!dir.path().join("disk.img.pr").exists());
}

#[test]
fn a_reopened_logical_unit_keeps_its_reservations() {
    let (bus, _f) = quiet_bus();
    let t = bus.target(0).unwrap();
    let (a, b) = (nexus("a", 1), nexus("b", 2));
    register(t, &a, 0xA);
    pr_out(t, &a, 1, 3, &list(0xA, 0, 0));
    let fresh = super::Reservations::open(std::path::Path::new("/nonexistent/x.img"), false);
    assert!(!fresh.engaged());
    fresh.adopt(t.lun(0).unwrap().reservations());
    assert!(fresh.engaged());
    assert_eq!(
        fresh.snapshot(),
        t.lun(0).unwrap().reservations().snapshot()
    );
    assert!(fresh.check(&b, super::Access::ReadShared, &[]).is_some());
    assert!(fresh.check(&a, super::Access::Modify, &[]).is_none());
}

#[test]
fn a_new_connection_tells_its_own_nexus_only_and_request_sense_reports_it() {
    let (bus, _f) = quiet_bus();
    let t = bus.target(0).unwrap();
    let lu = t.lun(0).unwrap();
    let (a, b) = (nexus("a", 1), nexus("b", 2));
    lu.nexus_power_on(&b);
    assert!(read(t, &a).is_good());
    // REQUEST SENSE from b: POWER ON, RESET (GOOD, parameter data).
    let (r, d) = exec(t, &b, Cdb::request_sense(false, 18).as_bytes(), &[]);
    assert!(r.is_good());
    assert_eq!((d[2], d[12], d[13]), (6, 0x29, 0x00));
    assert!(read(t, &b).is_good());
    // A reservation event for b, seen through REQUEST SENSE too.
    register(t, &a, 0xA);
    register(t, &b, 0xB);
    assert!(pr_out(t, &a, 3, 0, &list(0xA, 0, 0)).is_good());
    let (_, d) = exec(t, &b, Cdb::request_sense(false, 18).as_bytes(), &[]);
    assert_eq!((d[2], d[12], d[13]), (6, 0x2A, 0x03));
    assert!(read(t, &b).is_good());
    // While the LU-wide POWER ON of a fresh LU is pending, it covers the
    // first connection: no second one for that nexus.
    let (bus, _g) = bus_with(16, LunOptions::default());
    let t = bus.target(0).unwrap();
    t.lun(0).unwrap().nexus_power_on(&a);
    assert_eq!(triple(&read(t, &a)), (6, 0x29, 0x00));
    assert!(read(t, &a).is_good());
}
