//! The driver against the daemon: real socket, real memfd, real rings.
//! Expected bytes come from SPC-5 / SBC-4 and VIRTIO 1.2 §5.6.6.

mod common;

use common::{host_read, pattern, TestDaemon};
use vscsi_driver::{Driver, QueueConfig, ScsiCommand};
use vscsi_protocol::virtio_scsi::Response as VirtioResponse;

const MIB: u64 = 1 << 20;

fn sense_triple(sense: &[u8]) -> (u8, u8, u8) {
    assert!(
        sense.len() >= 14,
        "fixed sense is at least 14 bytes: {sense:02x?}"
    );
    assert_eq!(sense[0] & 0x7F, 0x70, "current error, fixed format");
    (sense[2] & 0x0F, sense[12], sense[13])
}

#[tokio::test]
async fn inquiry_returns_standard_data() {
    let d = TestDaemon::start(&[(0, 0, 16 * MIB, false)]);
    let drv = Driver::connect(&d.socket, QueueConfig::default())
        .await
        .unwrap();
    let r = drv
        .send_command(
            0,
            0,
            ScsiCommand::Inquiry {
                allocation_length: 96,
                evpd: false,
                page_code: 0,
            },
        )
        .await
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    let b = &r.data;
    assert!(b.len() >= 36, "standard INQUIRY data is at least 36 bytes");
    assert_eq!(
        b[0], 0x00,
        "peripheral qualifier 000b, direct-access block device"
    );
    assert_eq!(b[1] & 0x80, 0, "not removable");
    assert_eq!(b[3] & 0x0F, 2, "response data format 2");
    assert_eq!(
        b[4] as usize + 5,
        b.len(),
        "additional length covers the returned data"
    );
    assert_eq!(&b[8..16], b"VSCSI   ", "T10 vendor, space padded");
    assert_eq!(&b[16..32], b"VIRTUAL-DISK    ", "product, space padded");
    assert_eq!(r.residual as usize, 96 - b.len());

    // ALLOCATION LENGTH truncates (SPC-5 §4.2.5.6).
    let r = drv
        .send_command(
            0,
            0,
            ScsiCommand::Inquiry {
                allocation_length: 5,
                evpd: false,
                page_code: 0,
            },
        )
        .await
        .unwrap();
    assert!(r.is_good());
    assert_eq!(r.data.len(), 5);
    assert_eq!(r.residual, 0);
}

#[tokio::test]
async fn read_capacity_matches_the_image() {
    let d = TestDaemon::start(&[(0, 0, 16 * MIB, false)]);
    let drv = Driver::connect(&d.socket, QueueConfig::default())
        .await
        .unwrap();
    let blocks = 16 * MIB / 512;
    let r = drv
        .send_command(0, 0, ScsiCommand::ReadCapacity10)
        .await
        .unwrap();
    assert!(r.is_good());
    let mut want = ((blocks - 1) as u32).to_be_bytes().to_vec();
    want.extend_from_slice(&512u32.to_be_bytes());
    assert_eq!(
        r.data, want,
        "RETURNED LOGICAL BLOCK ADDRESS = last LBA, then block length"
    );

    let r = drv
        .send_command(
            0,
            0,
            ScsiCommand::ReadCapacity16 {
                allocation_length: 32,
            },
        )
        .await
        .unwrap();
    assert!(r.is_good());
    assert_eq!(r.data.len(), 32);
    assert_eq!(&r.data[0..8], &(blocks - 1).to_be_bytes());
    assert_eq!(&r.data[8..12], &512u32.to_be_bytes());

    let found = drv.scan().await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].capacity(), 16 * MIB);
}

#[tokio::test]
async fn round_trip_on_two_luns_and_two_targets() {
    let d = TestDaemon::start(&[
        (0, 0, 8 * MIB, false),
        (0, 1, 8 * MIB, false),
        (3, 0, 8 * MIB, false),
    ]);
    let drv = Driver::connect(&d.socket, QueueConfig::default())
        .await
        .unwrap();
    for (i, (t, l)) in [(0u8, 0u16), (0, 1), (3, 0)].into_iter().enumerate() {
        let lba = 100 + i as u64;
        let data = pattern(lba, 64, 512, i as u64);
        let w = drv
            .send_command(
                t,
                l,
                ScsiCommand::Write {
                    lba,
                    blocks: 64,
                    data: data.clone(),
                },
            )
            .await
            .unwrap();
        assert!(w.is_good(), "{w:?}");
        let r = drv
            .send_command(
                t,
                l,
                ScsiCommand::Read {
                    lba,
                    blocks: 64,
                    block_size: 512,
                },
            )
            .await
            .unwrap();
        assert!(r.is_good());
        assert_eq!(r.data, data, "{t}:{l} reads back what was written");
        assert_eq!(
            host_read(&d.image_path(t, l), lba * 512, data.len()),
            data,
            "the image file holds it"
        );
    }
    // Each LUN is its own image: LUN 1's write did not land on LUN 0.
    assert_ne!(
        host_read(&d.image_path(0, 0), 101 * 512, 512),
        pattern(101, 1, 512, 1)
    );
    let found = drv.scan().await.unwrap();
    let addrs: Vec<_> = found.iter().map(|f| (f.lun.target, f.lun.lun)).collect();
    assert_eq!(addrs, vec![(0, 0), (0, 1), (3, 0)]);
}

#[tokio::test]
async fn out_of_range_lba_gets_5_21_00() {
    let d = TestDaemon::start(&[(0, 0, MIB, false)]);
    let drv = Driver::connect(&d.socket, QueueConfig::default())
        .await
        .unwrap();
    let blocks = MIB / 512;
    // Last block is fine, one past it is not; a range running past the end neither.
    let ok = drv
        .send_command(
            0,
            0,
            ScsiCommand::Read {
                lba: blocks - 1,
                blocks: 1,
                block_size: 512,
            },
        )
        .await
        .unwrap();
    assert!(ok.is_good());
    for (lba, n) in [(blocks, 1), (blocks - 1, 2), (u32::MAX as u64, 1)] {
        let r = drv
            .send_command(
                0,
                0,
                ScsiCommand::Read {
                    lba,
                    blocks: n,
                    block_size: 512,
                },
            )
            .await
            .unwrap();
        assert_eq!(r.virtio(), Some(VirtioResponse::Ok));
        assert_eq!(r.status, 0x02, "CHECK CONDITION");
        assert_eq!(
            sense_triple(&r.sense),
            (0x05, 0x21, 0x00),
            "ILLEGAL REQUEST, LBA OUT OF RANGE"
        );
        assert!(r.data.is_empty());
    }
    let w = drv
        .send_command(
            0,
            0,
            ScsiCommand::Write {
                lba: blocks,
                blocks: 1,
                data: vec![0xAA; 512],
            },
        )
        .await
        .unwrap();
    assert_eq!(sense_triple(&w.sense), (0x05, 0x21, 0x00));
}

#[tokio::test]
async fn unknown_opcode_gets_5_20_00() {
    let d = TestDaemon::start(&[(0, 0, MIB, false)]);
    let drv = Driver::connect(&d.socket, QueueConfig::default())
        .await
        .unwrap();
    for cdb in [
        vec![0xC0, 0, 0, 0, 0, 0],
        vec![0x02, 0, 0, 0, 0, 0],
        vec![0xFF; 16],
    ] {
        let r = drv
            .send_command(
                0,
                0,
                ScsiCommand::Raw {
                    cdb: cdb.clone(),
                    data_out: vec![],
                    data_in_len: 64,
                },
            )
            .await
            .unwrap();
        assert_eq!(r.status, 0x02, "{cdb:02x?}");
        assert_eq!(
            sense_triple(&r.sense),
            (0x05, 0x20, 0x00),
            "INVALID COMMAND OPERATION CODE for {cdb:02x?}"
        );
    }
}

#[tokio::test]
async fn missing_target_is_bad_target_and_missing_lun_is_not_supported() {
    let d = TestDaemon::start(&[(0, 0, MIB, false)]);
    let drv = Driver::connect(&d.socket, QueueConfig::default())
        .await
        .unwrap();
    let r = drv
        .send_command(7, 0, ScsiCommand::TestUnitReady)
        .await
        .unwrap();
    assert_eq!(r.response, 3, "VIRTIO_SCSI_S_BAD_TARGET");
    assert_eq!(r.virtio(), Some(VirtioResponse::BadTarget));

    let inq = drv
        .send_command(
            0,
            9,
            ScsiCommand::Inquiry {
                allocation_length: 36,
                evpd: false,
                page_code: 0,
            },
        )
        .await
        .unwrap();
    assert!(
        inq.is_good(),
        "INQUIRY to a missing LUN succeeds (SPC-5 §6.7.2)"
    );
    assert_eq!(
        inq.data[0], 0x7F,
        "peripheral qualifier 011b, device type 1Fh"
    );
    let tur = drv
        .send_command(0, 9, ScsiCommand::TestUnitReady)
        .await
        .unwrap();
    assert_eq!(tur.status, 0x02);
    assert_eq!(
        sense_triple(&tur.sense),
        (0x05, 0x25, 0x00),
        "LOGICAL UNIT NOT SUPPORTED"
    );

    // A LUN field whose first byte is not 1 addresses nothing (§5.6.6.1).
    let r = drv
        .send_to([0, 0, 0x40, 0, 0, 0, 0, 0], &ScsiCommand::TestUnitReady)
        .await
        .unwrap();
    assert_eq!(r.virtio(), Some(VirtioResponse::BadTarget));
}

#[tokio::test]
async fn read_only_lun_refuses_writes_and_keeps_the_image() {
    let d = TestDaemon::start(&[(0, 0, MIB, true)]);
    let drv = Driver::connect(&d.socket, QueueConfig::default())
        .await
        .unwrap();
    let w = drv
        .send_command(
            0,
            0,
            ScsiCommand::Write {
                lba: 0,
                blocks: 1,
                data: vec![0xAB; 512],
            },
        )
        .await
        .unwrap();
    assert_eq!(
        sense_triple(&w.sense),
        (0x07, 0x27, 0x00),
        "DATA PROTECT, WRITE PROTECTED"
    );
    assert_eq!(host_read(&d.image_path(0, 0), 0, 512), vec![0; 512]);
}

#[tokio::test]
async fn many_commands_in_flight_across_queues_and_ring_modes() {
    let opts = vscsi_backend::vhost::DeviceOptions {
        request_queues: 2,
        ..Default::default()
    };
    let d = TestDaemon::start_with(&[(0, 0, 8 * MIB, false)], opts);
    for (queue_count, queue_size, use_indirect, event_index) in [
        (1, 16, false, false),
        (1, 64, true, false),
        (2, 128, false, true),
        (2, 256, true, true),
    ] {
        let cfg = QueueConfig {
            queue_count,
            queue_size,
            use_indirect,
            event_index,
            use_packed: false,
        };
        let drv = std::sync::Arc::new(Driver::connect(&d.socket, cfg).await.unwrap());
        let f = drv.features();
        assert_eq!(
            (f.indirect, f.event_index, f.queue_count),
            (use_indirect, event_index, queue_count)
        );
        let seed = queue_size as u64;
        let mut set = tokio::task::JoinSet::new();
        for i in 0..256u64 {
            let drv = drv.clone();
            set.spawn(async move {
                let data = pattern(i * 8, 8, 512, seed);
                let w = drv
                    .send_command(
                        0,
                        0,
                        ScsiCommand::Write {
                            lba: i * 8,
                            blocks: 8,
                            data,
                        },
                    )
                    .await
                    .unwrap();
                assert!(w.is_good());
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
        for i in 0..256u64 {
            let drv = drv.clone();
            set.spawn(async move {
                let r = drv
                    .send_command(
                        0,
                        0,
                        ScsiCommand::Read {
                            lba: i * 8,
                            blocks: 8,
                            block_size: 512,
                        },
                    )
                    .await
                    .unwrap();
                assert_eq!(r.data, pattern(i * 8, 8, 512, seed), "lba {}", i * 8);
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
    }
}

#[tokio::test]
async fn a_new_frontend_reads_what_a_disconnected_one_wrote() {
    let d = TestDaemon::start(&[(0, 0, 4 * MIB, false)]);
    let first = std::sync::Arc::new(
        Driver::connect(&d.socket, QueueConfig::default())
            .await
            .unwrap(),
    );
    let data = pattern(0, 256, 512, 42);
    let w = first
        .send_command(
            0,
            0,
            ScsiCommand::Write {
                lba: 0,
                blocks: 256,
                data: data.clone(),
            },
        )
        .await
        .unwrap();
    assert!(w.is_good());
    // Leave commands in flight and drop the connection mid-stream.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..32u64 {
        let drv = first.clone();
        set.spawn(async move {
            let data = pattern(1000 + i, 1, 512, 7);
            let _ = drv
                .send_command(
                    0,
                    0,
                    ScsiCommand::Write {
                        lba: 1000 + i,
                        blocks: 1,
                        data,
                    },
                )
                .await;
        });
    }
    tokio::task::yield_now().await;
    set.abort_all();
    while set.join_next().await.is_some() {}
    assert_eq!(std::sync::Arc::strong_count(&first), 1);
    drop(first);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let second = Driver::connect(&d.socket, QueueConfig::default())
        .await
        .unwrap();
    let r = second
        .send_command(
            0,
            0,
            ScsiCommand::Read {
                lba: 0,
                blocks: 256,
                block_size: 512,
            },
        )
        .await
        .unwrap();
    assert!(r.is_good());
    assert_eq!(r.data, data);
}

#[tokio::test]
async fn reads_and_writes_bigger_than_a_slot_are_split_transparently() {
    let d = TestDaemon::start(&[(0, 0, 4 * MIB, false)]);
    let opts = vscsi_driver::DriverOptions {
        max_transfer: 4096,
        ..Default::default()
    };
    let drv = Driver::connect_with(&d.socket, QueueConfig::default(), opts)
        .await
        .unwrap();
    assert_eq!(drv.max_transfer(), 4096);
    // 100 blocks of 512 bytes: 13 commands of at most 8 blocks.
    let data = pattern(3, 100, 512, 9);
    let kicks = drv.kicks();
    let w = drv
        .send_command(
            0,
            0,
            ScsiCommand::Write {
                lba: 3,
                blocks: 100,
                data: data.clone(),
            },
        )
        .await
        .unwrap();
    assert!(w.is_good(), "{w:?}");
    assert!(
        drv.kicks() - kicks >= 2,
        "several commands went to the device"
    );
    assert_eq!(host_read(&d.image_path(0, 0), 3 * 512, data.len()), data);
    let r = drv
        .send_command(
            0,
            0,
            ScsiCommand::Read {
                lba: 3,
                blocks: 100,
                block_size: 512,
            },
        )
        .await
        .unwrap();
    assert!(r.is_good());
    assert_eq!(r.data, data);
    // A split transfer running off the end answers like the part that failed.
    let blocks = 4 * MIB / 512;
    let r = drv
        .send_command(
            0,
            0,
            ScsiCommand::Read {
                lba: blocks - 10,
                blocks: 20,
                block_size: 512,
            },
        )
        .await
        .unwrap();
    assert_eq!(sense_triple(&r.sense), (0x05, 0x21, 0x00));
}

#[tokio::test]
async fn a_new_frontend_first_gets_power_on_reset_then_good() {
    let dir = tempfile::tempdir().unwrap();
    let img = common::image(dir.path(), "d.img", MIB);
    let spec = vscsi_backend::config::LunSpec::new(0, 0, &img);
    assert!(
        spec.options.power_on_ua,
        "the daemon's default, as a real disk (SPC-5 §5.14)"
    );
    let d = TestDaemon::serve_exact(dir, &[spec], vscsi_backend::vhost::DeviceOptions::default());
    for _connection in 0..2 {
        let drv = Driver::connect(&d.socket, QueueConfig::default())
            .await
            .unwrap();
        // INQUIRY is not blocked by a unit attention (SAM-5 §5.14).
        let inq = drv
            .send_command(
                0,
                0,
                ScsiCommand::Inquiry {
                    allocation_length: 36,
                    evpd: false,
                    page_code: 0,
                },
            )
            .await
            .unwrap();
        assert!(inq.is_good());
        // A pass-through command (not retried) sees it once: 6/29/00.
        let tur = || ScsiCommand::Raw {
            cdb: vec![0, 0, 0, 0, 0, 0],
            data_out: vec![],
            data_in_len: 0,
        };
        let first = drv.send_command(0, 0, tur()).await.unwrap();
        assert_eq!(first.status, 0x02);
        assert_eq!(
            sense_triple(&first.sense),
            (0x06, 0x29, 0x00),
            "POWER ON, RESET, OR BUS DEVICE RESET OCCURRED"
        );
        assert!(drv.send_command(0, 0, tur()).await.unwrap().is_good());
    }
}

#[tokio::test]
async fn what_the_device_lacks_falls_back_or_fails_as_the_user_chooses() {
    use virtio_bindings::virtio_config::VIRTIO_F_RING_PACKED;
    use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
    use vscsi_backend::vhost::device::OPTIONAL_FEATURES;
    let opts = vscsi_backend::vhost::DeviceOptions {
        request_queues: 2,
        features: OPTIONAL_FEATURES
            & !(1 << VIRTIO_RING_F_EVENT_IDX
                | 1 << VIRTIO_RING_F_INDIRECT_DESC
                | 1 << VIRTIO_F_RING_PACKED),
        ..Default::default()
    };
    let d = TestDaemon::start_with(&[(0, 0, MIB, false)], opts);
    let ask = QueueConfig {
        queue_count: 4,
        queue_size: 64,
        use_indirect: true,
        event_index: true,
        use_packed: true,
    };
    // Default: fall back, and say what was agreed.
    let drv = Driver::connect(&d.socket, ask).await.unwrap();
    let f = drv.features();
    assert!(!f.indirect && !f.event_index && !f.packed);
    assert_eq!(f.bits & 1 << VIRTIO_F_RING_PACKED, 0);
    assert_eq!(f.queue_count, 2);
    assert!(drv
        .send_command(0, 0, ScsiCommand::TestUnitReady)
        .await
        .unwrap()
        .is_good());
    drop(drv);
    // Strict: a clear error naming what is missing.
    let strict = vscsi_driver::DriverOptions {
        strict_features: true,
        ..Default::default()
    };
    for (cfg, missing) in [
        (ask, "VIRTIO_RING_F_INDIRECT_DESC"),
        (
            QueueConfig {
                use_indirect: false,
                ..ask
            },
            "VIRTIO_RING_F_EVENT_IDX",
        ),
        (
            QueueConfig {
                use_indirect: false,
                event_index: false,
                ..ask
            },
            "VIRTIO_F_RING_PACKED",
        ),
        (
            QueueConfig {
                use_indirect: false,
                event_index: false,
                use_packed: false,
                ..ask
            },
            "4 request queues asked, the device has 2",
        ),
    ] {
        let e = Driver::connect_with(&d.socket, cfg, strict)
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains(missing), "{e}");
    }
}
