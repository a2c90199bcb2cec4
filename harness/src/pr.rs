//! `vscsi pr`: persistent reservations, like sg_persist. One action per
//! run: a PERSISTENT RESERVE OUT service action (register, reserve,
//! release, clear, preempt) or a PERSISTENT RESERVE IN one (read keys,
//! reservation, capabilities, full status), SPC-5 §6.15 and §6.16.

use anyhow::Result;
use serde_json::{json, Map, Value};
use vscsi_driver::{Response, ScsiCommand};
use vscsi_protocol::persistent_reservation::{
    pr_in_cdb, pr_out_cdb, protocol_id, Capabilities, InAction, OutAction, OutParameters,
    ReadFullStatus, ReadKeys, ReadReservation, ReservationType, OUT_PARAMETER_LIST_LEN,
};

use crate::device::{Device, DeviceArgs};
use crate::output::{self, UsageError};

/// Persistent reservations (SPC-5): register a key, reserve, release,
/// clear, preempt, or read keys / reservation / capabilities / full status.
/// Keys are hexadecimal, with or without 0x, as sg_persist takes them.
/// A command the device refuses (RESERVATION CONFLICT, CHECK CONDITION)
/// exits 1.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("action").required(true).multiple(false)))]
pub struct Args {
    /// REGISTER: register KEY (change from --key OLD; KEY 0 unregisters).
    #[arg(long, value_name = "KEY", group = "action", value_parser = key)]
    pub register: Option<u64>,
    /// REGISTER AND IGNORE EXISTING KEY: register KEY whatever is registered now.
    #[arg(long, value_name = "KEY", group = "action", value_parser = key)]
    pub register_ignore: Option<u64>,
    /// RESERVE with --type, as the holder of --key.
    #[arg(long, group = "action")]
    pub reserve: bool,
    /// RELEASE the reservation of --type held through --key.
    #[arg(long, group = "action")]
    pub release: bool,
    /// CLEAR every registration and the reservation (needs a registered --key).
    #[arg(long, group = "action")]
    pub clear: bool,
    /// PREEMPT the registrations of KEY (and its reservation, becoming holder of --type).
    #[arg(long, value_name = "KEY", group = "action", value_parser = key)]
    pub preempt: Option<u64>,
    /// PREEMPT AND ABORT: preempt KEY and abort its nexuses' commands.
    #[arg(long, value_name = "KEY", group = "action", value_parser = key)]
    pub preempt_abort: Option<u64>,
    /// READ KEYS: PRgeneration and the registered keys.
    #[arg(long, short = 'k', group = "action")]
    pub read_keys: bool,
    /// READ RESERVATION: PRgeneration and the reservation held, if any.
    #[arg(long, short = 'r', group = "action")]
    pub read_reservation: bool,
    /// REPORT CAPABILITIES: what the device supports.
    #[arg(long, short = 'c', group = "action")]
    pub report_capabilities: bool,
    /// READ FULL STATUS: each registration with its port and TransportID.
    #[arg(long, short = 's', group = "action")]
    pub read_full_status: bool,
    /// The RESERVATION KEY this I_T nexus is registered with (hex; default 0).
    #[arg(long, value_name = "KEY", default_value = "0", value_parser = key)]
    pub key: u64,
    /// Reservation type: 1 we, 3 ea, 5 we-ro, 6 ea-ro, 7 we-ar, 8 ea-ar.
    #[arg(long = "type", short = 'T', value_name = "TYPE", value_parser = reservation_type)]
    pub rtype: Option<ReservationType>,
    /// APTPL: keep the registrations across a power loss (with a register action).
    #[arg(long)]
    pub aptpl: bool,
    /// ALL_TG_PT: register on every target port (with a register action).
    #[arg(long)]
    pub all_tg_pt: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// A reservation key in hex (`0x` optional), as sg_persist reads it.
fn key(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    u64::from_str_radix(digits, 16)
        .map_err(|_| format!("'{s}' is not a reservation key (up to 16 hex digits, e.g. 0x1234)"))
}

/// A reservation type by code (1, 3, 5, 6, 7, 8) or sg_persist's name.
fn reservation_type(s: &str) -> Result<ReservationType, String> {
    let t = s.trim();
    let found = match t.parse::<u8>() {
        Ok(n) => ReservationType::from_code(n).filter(|r| r.code() == n),
        Err(_) => ReservationType::from_short_name(t),
    };
    found.ok_or_else(|| {
        format!("'{s}' is not a reservation type (1 we, 3 ea, 5 we-ro, 6 ea-ro, 7 we-ar, 8 ea-ar)")
    })
}

/// What one run sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Out {
        action: OutAction,
        service_action_key: u64,
        needs_type: bool,
    },
    In(InAction),
}

impl Args {
    fn action(&self) -> Action {
        let out = |action, service_action_key, needs_type| Action::Out {
            action,
            service_action_key,
            needs_type,
        };
        if let Some(k) = self.register {
            out(OutAction::Register, k, false)
        } else if let Some(k) = self.register_ignore {
            out(OutAction::RegisterAndIgnoreExistingKey, k, false)
        } else if self.reserve {
            out(OutAction::Reserve, 0, true)
        } else if self.release {
            out(OutAction::Release, 0, true)
        } else if self.clear {
            out(OutAction::Clear, 0, false)
        } else if let Some(k) = self.preempt {
            out(OutAction::Preempt, k, true)
        } else if let Some(k) = self.preempt_abort {
            out(OutAction::PreemptAndAbort, k, true)
        } else if self.read_keys {
            Action::In(InAction::ReadKeys)
        } else if self.read_reservation {
            Action::In(InAction::ReadReservation)
        } else if self.report_capabilities {
            Action::In(InAction::ReportCapabilities)
        } else {
            Action::In(InAction::ReadFullStatus)
        }
    }

    /// Checks the flags that only make sense with some actions.
    fn check(&self) -> Result<Action, UsageError> {
        let action = self.action();
        let registering = matches!(
            action,
            Action::Out {
                action: OutAction::Register | OutAction::RegisterAndIgnoreExistingKey,
                ..
            }
        );
        if (self.aptpl || self.all_tg_pt) && !registering {
            return Err(UsageError(
                "--aptpl and --all-tg-pt go with --register or --register-ignore".into(),
            ));
        }
        match action {
            Action::Out {
                action, needs_type, ..
            } if needs_type && self.rtype.is_none() => Err(UsageError(format!(
                "{} needs --type (1 we, 3 ea, 5 we-ro, 6 ea-ro, 7 we-ar, 8 ea-ar)",
                action.name()
            ))),
            Action::In(_) if self.rtype.is_some() => Err(UsageError(
                "--type goes with --reserve, --release, --preempt or --preempt-abort".into(),
            )),
            _ => Ok(action),
        }
    }
}

/// First try for PR IN data; a longer answer is fetched again at its length.
const IN_LEN: u16 = 8192;

pub async fn run(args: Args) -> Result<()> {
    let action = args.check()?;
    let dev = Device::open(&args.device).await?;
    let json = args.device.conn.json;
    match action {
        Action::Out {
            action,
            service_action_key,
            needs_type,
        } => {
            let params = OutParameters {
                reservation_key: args.key,
                service_action_key,
                spec_i_pt: false,
                all_tg_pt: args.all_tg_pt,
                aptpl: args.aptpl,
            };
            let rtype = if needs_type { args.rtype } else { None };
            let cdb = pr_out_cdb(action, rtype, OUT_PARAMETER_LIST_LEN as u32);
            let what = format!("PERSISTENT RESERVE OUT ({})", action.name());
            let cmd = ScsiCommand::Raw {
                cdb: cdb.as_bytes().to_vec(),
                data_out: params.to_bytes().to_vec(),
                data_in_len: 0,
            };
            let r = dev.send_good(&what, cmd).await?;
            if json {
                let mut m = base_json(&dev, &r, action.name());
                m.insert("key".into(), json!(key_hex(args.key)));
                m.insert(
                    "service_action_key".into(),
                    json!(key_hex(service_action_key)),
                );
                m.insert(
                    "type".into(),
                    rtype.map_or(Value::Null, |t| json!(t.code())),
                );
                m.insert("aptpl".into(), json!(args.aptpl));
                output::print_json(&Value::Object(m));
            } else {
                println!("PR out ({}): command successful", action.name());
            }
            Ok(())
        }
        Action::In(action) => {
            let r = pr_in(&dev, action).await?;
            let data = &r.data;
            let text = match action {
                InAction::ReadKeys => keys(ReadKeys::decode(data)?),
                InAction::ReadReservation => reservation(ReadReservation::decode(data)?),
                InAction::ReportCapabilities => capabilities(Capabilities::decode(data)?),
                InAction::ReadFullStatus => full_status(ReadFullStatus::decode(data)?),
            };
            if json {
                let mut m = base_json(&dev, &r, action.name());
                if let Value::Object(fields) = text.json {
                    m.extend(fields);
                }
                m.insert("data_hex".into(), json!(hex::encode(data)));
                output::print_json(&Value::Object(m));
            } else {
                print!("{}", text.human);
            }
            Ok(())
        }
    }
}

/// Sends PR IN, again with a larger allocation length if the data says it was cut.
async fn pr_in(dev: &Device, action: InAction) -> Result<Response> {
    let what = format!("PERSISTENT RESERVE IN ({})", action.name());
    let mut len = IN_LEN;
    loop {
        let cmd = ScsiCommand::Raw {
            cdb: pr_in_cdb(action, len).as_bytes().to_vec(),
            data_out: Vec::new(),
            data_in_len: usize::from(len),
        };
        let r = dev.send_good(&what, cmd).await?;
        let full = if action == InAction::ReportCapabilities {
            r.data.len()
        } else {
            r.data.get(4..8).map_or(r.data.len(), |b| {
                8 + u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
            })
        };
        if full > usize::from(len) && len < u16::MAX {
            len = full.min(usize::from(u16::MAX)) as u16;
            continue;
        }
        return Ok(r);
    }
}

fn base_json(dev: &Device, r: &Response, action: &str) -> Map<String, Value> {
    let mut m = output::response_json(r);
    m.insert("target".into(), json!(dev.target));
    m.insert("lun".into(), json!(dev.lun));
    m.insert("action".into(), json!(action));
    m
}

fn key_hex(k: u64) -> String {
    format!("{k:#x}")
}

/// One PR IN answer, as text and as JSON fields.
struct Shown {
    human: String,
    json: Value,
}

fn type_json(code: u8) -> Value {
    json!({
        "code": code,
        "name": ReservationType::from_code(code).filter(|t| t.code() == code).map(ReservationType::short_name),
    })
}

fn type_text(code: u8) -> String {
    match ReservationType::from_code(code).filter(|t| t.code() == code) {
        Some(t) => t.name().to_string(),
        None => format!("obsolete or reserved type {code:#x}"),
    }
}

fn scope_text(scope: u8) -> String {
    if scope == 0 {
        "LU_SCOPE".into()
    } else {
        format!("scope {scope:#x}")
    }
}

fn keys(k: ReadKeys) -> Shown {
    let mut s = format!("  PR generation={:#x}, ", k.generation);
    if k.keys.is_empty() {
        s.push_str("there are NO registered reservation keys\n");
    } else {
        s.push_str(&format!(
            "{} registered reservation key{} follow{}:\n",
            k.keys.len(),
            if k.keys.len() == 1 { "" } else { "s" },
            if k.keys.len() == 1 { "s" } else { "" }
        ));
        for key in &k.keys {
            s.push_str(&format!("    {key:#x}\n"));
        }
    }
    Shown {
        human: s,
        json: json!({
            "generation": k.generation,
            "keys": k.keys.iter().map(|&k| key_hex(k)).collect::<Vec<_>>(),
        }),
    }
}

fn reservation(r: ReadReservation) -> Shown {
    let mut s = format!("  PR generation={:#x}, ", r.generation);
    let res = match r.reservation {
        None => {
            s.push_str("there is NO reservation held\n");
            Value::Null
        }
        Some(res) => {
            s.push_str("Reservation follows:\n");
            s.push_str(&format!("    Key={:#x}\n", res.key));
            s.push_str(&format!(
                "    scope: {},  type: {}\n",
                scope_text(res.scope),
                type_text(res.rtype)
            ));
            json!({ "key": key_hex(res.key), "scope": res.scope, "type": type_json(res.rtype) })
        }
    };
    Shown {
        human: s,
        json: json!({ "generation": r.generation, "reservation": res }),
    }
}

fn capabilities(c: Capabilities) -> Shown {
    let bit = |b: bool| u8::from(b);
    let mut s = String::from("Report capabilities response:\n");
    s.push_str(&format!(
        "  Replace Lost Reservation Capable(RLR_C): {}\n",
        bit(c.rlr_c)
    ));
    s.push_str(&format!(
        "  Compatible Reservation Handling(CRH): {}\n",
        bit(c.crh)
    ));
    s.push_str(&format!(
        "  Specify Initiator Ports Capable(SIP_C): {}\n",
        bit(c.sip_c)
    ));
    s.push_str(&format!(
        "  All Target Ports Capable(ATP_C): {}\n",
        bit(c.atp_c)
    ));
    s.push_str(&format!(
        "  Persist Through Power Loss Capable(PTPL_C): {}\n",
        bit(c.ptpl_c)
    ));
    s.push_str(&format!("  Type Mask Valid(TMV): {}\n", bit(c.tmv)));
    s.push_str(&format!("  Allow Commands: {}\n", c.allow_commands));
    s.push_str(&format!(
        "  Persist Through Power Loss Active(PTPL_A): {}\n",
        bit(c.ptpl_a)
    ));
    if c.tmv {
        s.push_str("    Support indicated in Type mask:\n");
        for t in ReservationType::ALL {
            s.push_str(&format!(
                "      {}: {}\n",
                t.name(),
                bit(c.type_mask & t.mask_bit() != 0)
            ));
        }
    }
    Shown {
        human: s,
        json: json!({
            "rlr_c": c.rlr_c, "crh": c.crh, "sip_c": c.sip_c, "atp_c": c.atp_c,
            "ptpl_c": c.ptpl_c, "tmv": c.tmv, "allow_commands": c.allow_commands,
            "ptpl_a": c.ptpl_a, "type_mask": c.type_mask,
            "types": c.types().iter().map(|t| t.short_name()).collect::<Vec<_>>(),
        }),
    }
}

fn full_status(f: ReadFullStatus) -> Shown {
    let mut s = format!("  PR generation={:#x}\n", f.generation);
    if f.descriptors.is_empty() {
        s.push_str("    No full status descriptors\n");
    }
    let mut list = Vec::new();
    for d in &f.descriptors {
        s.push_str(&format!("    Key={:#x}\n", d.key));
        if d.all_tg_pt {
            s.push_str("      All target ports bit set\n");
        } else {
            s.push_str("      All target ports bit clear\n");
            s.push_str(&format!(
                "      Relative port address: {:#x}\n",
                d.relative_target_port
            ));
        }
        if d.holder {
            s.push_str("      << Reservation holder >>\n");
            s.push_str(&format!(
                "      scope: {},  type: {}\n",
                scope_text(d.scope),
                type_text(d.rtype)
            ));
        } else {
            s.push_str("      not reservation holder\n");
        }
        let tid = d.transport_id.as_ref().map(|t| {
            s.push_str("      Transport Id of initiator:\n");
            s.push_str(&format!(
                "        {} (format {}): {}\n",
                protocol_id::name(t.protocol),
                t.format,
                t.describe()
            ));
            json!({
                "protocol": t.protocol,
                "protocol_name": protocol_id::name(t.protocol),
                "format": t.format,
                "name": t.describe(),
                "hex": hex::encode(&t.bytes),
            })
        });
        list.push(json!({
            "key": key_hex(d.key),
            "all_tg_pt": d.all_tg_pt,
            "holder": d.holder,
            "scope": d.scope,
            "type": if d.holder { type_json(d.rtype) } else { Value::Null },
            "relative_target_port": d.relative_target_port,
            "transport_id": tid,
        }));
    }
    Shown {
        human: s,
        json: json!({ "generation": f.generation, "registrations": list }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vscsi_protocol::persistent_reservation::{FullStatusDescriptor, Reservation, TransportId};

    #[test]
    fn keys_and_types_parse() {
        assert_eq!(key("0x1234"), Ok(0x1234));
        assert_eq!(key("abc"), Ok(0xABC));
        assert_eq!(key("ffffffffffffffff"), Ok(u64::MAX));
        assert!(key("0x1_0000_0000_0000_0000").is_err());
        assert!(key("xyz").is_err());
        assert_eq!(reservation_type("1"), Ok(ReservationType::WriteExclusive));
        assert_eq!(
            reservation_type("we-ro"),
            Ok(ReservationType::WriteExclusiveRegistrantsOnly)
        );
        assert_eq!(
            reservation_type("EA-AR"),
            Ok(ReservationType::ExclusiveAccessAllRegistrants)
        );
        // 2 and 4 are obsolete; 17 must not alias 1 through the 4-bit mask.
        for bad in ["2", "4", "17", "0", "wx"] {
            assert!(reservation_type(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn human_output_resembles_sg_persist() {
        let k = keys(ReadKeys {
            generation: 3,
            keys: vec![0xA, 0xB],
        });
        assert_eq!(
            k.human,
            "  PR generation=0x3, 2 registered reservation keys follow:\n    0xa\n    0xb\n"
        );
        assert_eq!(k.json["keys"], json!(["0xa", "0xb"]));
        let none = keys(ReadKeys::default());
        assert_eq!(
            none.human,
            "  PR generation=0x0, there are NO registered reservation keys\n"
        );
        let r = reservation(ReadReservation {
            generation: 4,
            reservation: Some(Reservation {
                key: 0xA,
                scope: 0,
                rtype: 5,
            }),
        });
        assert_eq!(
            r.human,
            "  PR generation=0x4, Reservation follows:\n    Key=0xa\n    scope: LU_SCOPE,  type: Write Exclusive, registrants only\n"
        );
        assert_eq!(r.json["reservation"]["type"]["name"], "we-ro");
        let f = full_status(ReadFullStatus {
            generation: 1,
            descriptors: vec![FullStatusDescriptor {
                key: 0xA,
                all_tg_pt: false,
                holder: true,
                scope: 0,
                rtype: 1,
                relative_target_port: 2,
                transport_id: Some(TransportId::iscsi("iqn.test")),
            }],
        });
        assert!(f
            .human
            .contains("      Relative port address: 0x2\n      << Reservation holder >>\n"));
        assert!(f.human.contains("        iSCSI (format 0): iqn.test\n"));
        assert_eq!(f.json["registrations"][0]["relative_target_port"], 2);
    }
}
