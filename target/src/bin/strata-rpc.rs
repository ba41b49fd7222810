//! `strata-rpc`: the JSON-RPC command-line client of strata-tgt, the equivalent of SPDK's
//! `scripts/rpc.py`.
//!
//! ```text
//! strata-rpc [-s SOCK] [-t SECS] METHOD [ARGS...]
//! strata-rpc [-s SOCK] [-t SECS] call METHOD ['{"json":"params"}']
//! ```
//!
//! Every method of `docs/rpc.md` is a subcommand taking rpc.py's positional arguments and
//! options. The result is printed as pretty JSON on stdout. A JSON-RPC error response is printed
//! to stderr the way rpc.py prints it (`request:` / `Got JSON-RPC error response` / `response:`)
//! and the exit status is 1; so it is for connection failures and timeouts.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use strata_target::rpc::params::{
    backup, bdev, framework, journal, keyring, mirror, nvme, nvmf, parity, ByName, CliParams,
    NoParams,
};
use strata_target::rpc_client::{
    error_fields, make_request, response_result, ArgError, RpcClient, RpcClientError,
    DEFAULT_SOCKET_PATH,
};

/// strata JSON-RPC client (rpc.py-compatible syntax).
#[derive(Debug, Parser)]
#[command(name = "strata-rpc", version)]
struct Cli {
    /// RPC server Unix socket path.
    #[arg(short = 's', long = "server", value_name = "SOCK", default_value = DEFAULT_SOCKET_PATH)]
    server: PathBuf,

    /// Timeout in seconds for the response (fractions allowed).
    #[arg(short = 't', long = "timeout", value_name = "SECS", default_value = "60",
          value_parser = parse_timeout)]
    timeout: Duration,

    /// Print the request that would be sent to stdout and exit, without connecting.
    #[arg(long = "dry-run")]
    dry_run: bool,

    #[command(subcommand)]
    method: Method,
}

/// Declares the subcommands: one per RPC method, named after it, whose arguments are the
/// method's parameter struct (or, where rpc.py's arguments are not the method's params, an
/// arguments struct that builds them).
macro_rules! methods {
    ($( $(#[$doc:meta])* $name:literal => $variant:ident($args:ty), )*) => {
        /// One subcommand per RPC method; the subcommand name is the method name.
        #[derive(Debug, Subcommand)]
        enum Method {
            /// Send any method with raw JSON params.
            #[command(name = "call")]
            Call {
                /// Method name.
                method: String,
                /// Params: a JSON object or array (omitted from the request when not given).
                params: Option<String>,
            },
            $( $(#[$doc])* #[command(name = $name)] $variant($args), )*
        }

        impl Method {
            /// The method name and params of the request the subcommand sends.
            fn request(&self) -> Result<(String, Option<Value>), ArgError> {
                match self {
                    Method::Call { method, params } => Ok((
                        method.clone(),
                        params.as_deref().map(parse_raw_params).transpose()?,
                    )),
                    $( Method::$variant(p) => Ok(($name.to_string(), p.to_params()?)), )*
                }
            }
        }
    };
}

methods! {
    /// List the methods the server supports.
    "rpc_get_methods" => RpcGetMethods(framework::GetMethods),
    /// Version of the target.
    "spdk_get_version" => SpdkGetVersion(NoParams),
    /// Reactors and their pollers.
    "framework_get_reactors" => FrameworkGetReactors(NoParams),
    /// The cluster store (etcd) in use and the volume records in it.
    "framework_get_cluster_store" => FrameworkGetClusterStore(NoParams),
    /// Create a RAM-backed bdev.
    "bdev_malloc_create" => BdevMallocCreate(bdev::MallocCreateArgs),
    /// Delete a malloc bdev.
    "bdev_malloc_delete" => BdevMallocDelete(ByName),
    /// Create a null bdev (discards writes, reads return nothing useful).
    "bdev_null_create" => BdevNullCreate(bdev::NullCreateArgs),
    /// Delete a null bdev.
    "bdev_null_delete" => BdevNullDelete(ByName),
    /// Create a bdev on a file or block device, served by io_uring.
    "bdev_uring_create" => BdevUringCreate(bdev::FileCreate),
    /// Delete a uring bdev.
    "bdev_uring_delete" => BdevUringDelete(ByName),
    /// Create an AIO bdev (served by the uring engine).
    "bdev_aio_create" => BdevAioCreate(bdev::FileCreate),
    /// Delete an AIO bdev.
    "bdev_aio_delete" => BdevAioDelete(ByName),
    /// Create an error-injection bdev EE_<BASE_NAME> on top of BASE_NAME.
    "bdev_error_create" => BdevErrorCreate(bdev::ErrorCreate),
    /// Delete an error-injection bdev.
    "bdev_error_delete" => BdevErrorDelete(ByName),
    /// Inject errors into an error bdev.
    "bdev_error_inject_error" => BdevErrorInjectError(bdev::ErrorInject),
    /// Create a delay bdev on top of another bdev (latencies in µs).
    "bdev_delay_create" => BdevDelayCreate(bdev::DelayCreate),
    /// Delete a delay bdev.
    "bdev_delay_delete" => BdevDelayDelete(ByName),
    /// Change one latency of a delay bdev.
    "bdev_delay_update_latency" => BdevDelayUpdateLatency(bdev::DelayUpdateLatency),
    /// Create a RAID volume.
    "bdev_raid_create" => BdevRaidCreate(bdev::RaidCreate),
    /// Delete a RAID volume.
    "bdev_raid_delete" => BdevRaidDelete(ByName),
    /// List RAID volumes: all, online, configuring or offline.
    "bdev_raid_get_bdevs" => BdevRaidGetBdevs(bdev::RaidGetBdevs),
    /// Add a base bdev to a degraded RAID volume (it is rebuilt).
    "bdev_raid_add_base_bdev" => BdevRaidAddBaseBdev(bdev::RaidAddBaseBdev),
    /// Remove a base bdev from its RAID volume.
    "bdev_raid_remove_base_bdev" => BdevRaidRemoveBaseBdev(ByName),
    /// Set RAID module options (rebuild/resync rate limit).
    "bdev_raid_set_options" => BdevRaidSetOptions(bdev::RaidSetOptions),
    /// Create a mirror of two bdevs (legs).
    "bdev_mirror_create" => BdevMirrorCreate(mirror::MirrorCreate),
    /// Delete a mirror (wipes its superblocks, releases the legs).
    "bdev_mirror_delete" => BdevMirrorDelete(ByName),
    /// Show mirrors: state, legs, dirty regions, job progress.
    "bdev_mirror_get" => BdevMirrorGet(mirror::MirrorGet),
    /// Split a mirror: the secondary pauses, changes are recorded (--snapshot: a
    /// point-in-time image, exported as a read-only bdev at once).
    "bdev_mirror_split" => BdevMirrorSplit(mirror::MirrorSplit),
    /// Back up a snapshot split's image into a repository (full or incremental).
    "bdev_mirror_backup" => BdevMirrorBackup(mirror::MirrorBackup),
    /// Make a backup repository (a directory, or bdev:NAME).
    "backup_repository_create" => BackupRepositoryCreate(backup::BackupRepositoryCreate),
    /// List the backups in a repository (complete, incomplete, damaged).
    "backup_list" => BackupList(backup::BackupList),
    /// Re-read every chunk of a backup (or all) and check its CRC32C.
    "backup_verify" => BackupVerify(backup::BackupVerify),
    /// Restore a backup (full + incrementals merged) onto a bdev.
    "backup_restore" => BackupRestore(backup::BackupRestore),
    /// Show backup verify and restore jobs.
    "backup_job_get" => BackupJobGet(backup::BackupJobGet),
    /// Create a protected volume group: a mirrored journal on two bdevs and a backup
    /// repository.
    "bdev_journal_group_create" => BdevJournalGroupCreate(journal::JournalGroupCreate),
    /// Delete a protected volume group (no volumes left; its journal headers are wiped).
    "bdev_journal_group_delete" => BdevJournalGroupDelete(ByName),
    /// Show protected volume groups: journal fill, oldest undrained record, volumes, jobs.
    "bdev_journal_group_get" => BdevJournalGroupGet(journal::JournalGroupGet),
    /// Drain a group now: undrained changes to the repository, then trim the journal.
    "bdev_journal_group_drain" => BdevJournalGroupDrain(journal::JournalGroupDrain),
    /// Change a group's drain conditions.
    "bdev_journal_group_set_options" => BdevJournalGroupSetOptions(journal::JournalGroupSetOptions),
    /// Put a new bdev in place of a failed journal leg (resynced from the other).
    "bdev_journal_group_replace_leg" => BdevJournalGroupReplaceLeg(journal::JournalGroupReplaceLeg),
    /// Bring a group back from its repository's catalog and its journal legs.
    "bdev_journal_group_recover" => BdevJournalGroupRecover(journal::JournalGroupRecover),
    /// Create a protected volume over a base bdev in a group.
    "bdev_journal_volume_create" => BdevJournalVolumeCreate(journal::JournalVolumeCreate),
    /// Delete a protected volume (its base is released untouched).
    "bdev_journal_volume_delete" => BdevJournalVolumeDelete(ByName),
    /// Show protected volumes: state, delta, last backup, layout, attributes, rebuild.
    "bdev_journal_volume_get" => BdevJournalVolumeGet(journal::JournalVolumeGet),
    /// Set (or with null remove) a protected volume's attributes.
    "bdev_journal_volume_set_attributes" => BdevJournalVolumeSetAttributes(journal::JournalVolumeSetAttributes),
    /// Rebuild a failed base from the blueprint, the backup chain and the journal.
    "bdev_journal_volume_rebuild" => BdevJournalVolumeRebuild(journal::JournalVolumeRebuild),
    /// Resume a split mirror: copy the changes to the secondary.
    "bdev_mirror_resume" => BdevMirrorResume(mirror::MirrorResume),
    /// Scrub a mirror: compare the legs by checksums (and repair).
    "bdev_mirror_verify" => BdevMirrorVerify(mirror::MirrorVerify),
    /// Attach a bdev in place of a failed or missing leg (it is resynced).
    "bdev_mirror_add_leg" => BdevMirrorAddLeg(mirror::MirrorAddLeg),
    /// Change a mirror's options.
    "bdev_mirror_set_options" => BdevMirrorSetOptions(mirror::MirrorSetOptions),
    /// Bring up a mirror held for split brain from one leg (the other's changes are lost).
    "bdev_mirror_resolve_split_brain" => BdevMirrorResolveSplitBrain(mirror::MirrorResolveSplitBrain),
    /// Create the P or Q parity volume of a parity group (parity node).
    "bdev_parity_create" => BdevParityCreate(parity::ParityCreate),
    /// Stop a parity volume or rebuild source (its superblock stays).
    "bdev_parity_delete" => BdevParityDelete(ByName),
    /// Tell a parity volume which bdev reaches data member INDEX.
    "bdev_parity_add_member" => BdevParityAddMember(parity::ParityAddMember),
    /// Forget data member INDEX of a parity volume.
    "bdev_parity_remove_member" => BdevParityRemoveMember(parity::ParityRemoveMember),
    /// Create the rebuild source of data member INDEX (its data as the parity sees it; with
    /// --also-lost and --partner, of two lost members through P and Q).
    "bdev_parity_source_create" => BdevParitySourceCreate(parity::ParitySourceCreate),
    /// Check a parity volume against the data members (and repair).
    "bdev_parity_verify" => BdevParityVerify(parity::ParityVerify),
    /// Create a parity group data member (data node): fold, rebuild or clean.
    "bdev_parity_member_create" => BdevParityMemberCreate(parity::ParityMemberCreate),
    /// Stop a data member (its superblock stays).
    "bdev_parity_member_delete" => BdevParityMemberDelete(ByName),
    /// Repair the parity of a member's marked regions now (and run an owed fold or rebuild).
    "bdev_parity_member_repair" => BdevParityMemberRepair(parity::ParityMemberRepair),
    /// Show parity volumes and data members: state, members, dirty regions, jobs.
    "bdev_parity_get" => BdevParityGet(parity::ParityGet),
    /// Layer options (auto-examine).
    "bdev_set_options" => BdevSetOptions(bdev::BdevSetOptions),
    /// Examine one bdev now (with auto-examine off).
    "bdev_examine" => BdevExamine(ByName),
    /// Attach a namespace of a remote NVMe/TCP target as bdevs NAMEn1, NAMEn2, ...
    "bdev_nvme_attach_controller" => BdevNvmeAttachController(nvme::NvmeAttach),
    /// Detach a remote controller (its bdevs are removed).
    "bdev_nvme_detach_controller" => BdevNvmeDetachController(nvme::NvmeDetach),
    /// List remote controllers and their connection state.
    "bdev_nvme_get_controllers" => BdevNvmeGetControllers(nvme::NvmeGetControllers),
    /// Drop and re-establish a remote controller's connection.
    "bdev_nvme_reset_controller" => BdevNvmeResetController(nvme::NvmeReset),
    /// Options for controllers attached later (timeouts, retries, keep-alive).
    "bdev_nvme_set_options" => BdevNvmeSetOptions(nvme::NvmeSetOptions),
    /// List bdevs (all, or the one named).
    "bdev_get_bdevs" => BdevGetBdevs(bdev::GetBdevs),
    /// I/O statistics of bdevs (all, or the one named).
    "bdev_get_iostat" => BdevGetIostat(bdev::GetIostat),
    /// The current configuration as an SPDK JSON config.
    "save_config" => SaveConfig(NoParams),
    /// Wait for the framework to be initialized.
    "framework_wait_init" => FrameworkWaitInit(NoParams),
    /// Wait for bdev examination to finish.
    "bdev_wait_for_examine" => BdevWaitForExamine(NoParams),
    /// Create the NVMe-oF transport (TCP only).
    "nvmf_create_transport" => NvmfCreateTransport(nvmf::CreateTransport),
    /// List the NVMe-oF transports.
    "nvmf_get_transports" => NvmfGetTransports(nvmf::GetTransports),
    /// Create an NVM subsystem.
    "nvmf_create_subsystem" => NvmfCreateSubsystem(nvmf::CreateSubsystem),
    /// Delete an NVM subsystem (its namespaces, listeners and connections go with it).
    "nvmf_delete_subsystem" => NvmfDeleteSubsystem(nvmf::ByNqn),
    /// Make a subsystem reachable on a transport address.
    "nvmf_subsystem_add_listener" => NvmfSubsystemAddListener(nvmf::Listener),
    /// Stop a subsystem listening on a transport address.
    "nvmf_subsystem_remove_listener" => NvmfSubsystemRemoveListener(nvmf::Listener),
    /// Allow DH-HMAC-CHAP digests and DH groups (the strongest a host offers is taken).
    "nvmf_set_config" => NvmfSetConfig(nvmf::SetConfig),
    /// Set (or, with neither key, clear) a host's DH-HMAC-CHAP keys.
    "nvmf_subsystem_set_keys" => NvmfSubsystemSetKeys(nvmf::SetKeys),
    /// Add a key from a file (owner-only access) to the keyring.
    "keyring_file_add_key" => KeyringFileAddKey(keyring::AddKey),
    /// Remove a key from the keyring.
    "keyring_file_remove_key" => KeyringFileRemoveKey(keyring::RemoveKey),
    /// List the keyring's keys (names and paths, never secrets).
    "keyring_get_keys" => KeyringGetKeys(keyring::GetKeys),
    /// Set the ANA state of a listener's ANA group (all groups without -g).
    "nvmf_subsystem_listener_set_ana_state" => NvmfSubsystemListenerSetAnaState(nvmf::ListenerAnaState),
    /// A subsystem's listeners and their ANA states.
    "nvmf_subsystem_get_listeners" => NvmfSubsystemGetListeners(nvmf::ByNqn),
    /// Add a bdev as a namespace of a subsystem (claims the bdev); prints the nsid.
    "nvmf_subsystem_add_ns" => NvmfSubsystemAddNs(nvmf::AddNs),
    /// Remove a namespace from a subsystem (releases the bdev).
    "nvmf_subsystem_remove_ns" => NvmfSubsystemRemoveNs(nvmf::RemoveNs),
    /// Allow a host NQN to connect to a subsystem.
    "nvmf_subsystem_add_host" => NvmfSubsystemAddHost(nvmf::Host),
    /// Remove a host NQN from a subsystem's allowed hosts.
    "nvmf_subsystem_remove_host" => NvmfSubsystemRemoveHost(nvmf::Host),
    /// Allow (-e) or restrict (-d) any host to connect to a subsystem.
    "nvmf_subsystem_allow_any_host" => NvmfSubsystemAllowAnyHost(nvmf::AllowAnyHost),
    /// List subsystems (all, or the one named).
    "nvmf_get_subsystems" => NvmfGetSubsystems(nvmf::GetSubsystems),
    /// Controllers connected to a subsystem.
    "nvmf_subsystem_get_controllers" => NvmfSubsystemGetControllers(nvmf::ByNqn),
    /// Queue pairs connected to a subsystem.
    "nvmf_subsystem_get_qpairs" => NvmfSubsystemGetQpairs(nvmf::ByNqn),
    /// NVMe-oF statistics, one poll group per reactor.
    "nvmf_get_stats" => NvmfGetStats(nvmf::GetStats),
    /// Shut the target down.
    "spdk_kill_instance" => SpdkKillInstance(framework::KillInstance),
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("not a number of seconds: {s:?}"))?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!(
            "the timeout must be a positive number of seconds, got {s}"
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid timeout {s}: {e}"))
}

/// Raw params of `call`: must be a JSON object or array.
fn parse_raw_params(text: &str) -> Result<Value, ArgError> {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ (Value::Object(_) | Value::Array(_))) => Ok(v),
        Ok(other) => Err(ArgError(format!(
            "params must be a JSON object or array, got {other}"
        ))),
        Err(e) => Err(ArgError(format!("params are not valid JSON: {e}"))),
    }
}

/// The `request:` part of rpc.py's error report: the params with `method` and `req_id` added.
fn request_for_report(request: &Value) -> Value {
    let method = request.get("method").cloned().unwrap_or(Value::Null);
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    match request.get("params") {
        None => json!({"method": method, "req_id": id}),
        Some(Value::Object(params)) => {
            let mut shown = params.clone();
            shown.insert("method".to_string(), method);
            shown.insert("req_id".to_string(), id);
            Value::Object(shown)
        }
        Some(params) => json!({"params": params, "method": method, "req_id": id}),
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// A job a subcommand asked to follow (`--wait`): the method that reports it, the volume,
/// where its report is while it runs and where its outcome is left when it ends. A
/// repository job (restore, verify) is named by the id the method answers with.
struct Follow {
    get: &'static str,
    name: String,
    job: &'static [&'static str],
    last: &'static [&'static str],
}

const JOB: &[&str] = &["job"];
const LAST_JOB: &[&str] = &["last_job"];
/// Marks a repository job: followed through `backup_job_get`.
const REPO_JOB: &str = "backup_job_get";

fn job_to_follow(method: &Method) -> Option<Follow> {
    let (get, name, job, last): (_, &str, _, _) = match method {
        Method::BdevMirrorCreate(p) if p.wait => ("bdev_mirror_get", &p.name, JOB, LAST_JOB),
        Method::BdevMirrorResume(p) if p.wait => ("bdev_mirror_get", &p.name, JOB, LAST_JOB),
        Method::BdevMirrorVerify(p) if p.wait => ("bdev_mirror_get", &p.name, JOB, LAST_JOB),
        Method::BdevMirrorAddLeg(p) if p.wait => ("bdev_mirror_get", &p.name, JOB, LAST_JOB),
        Method::BdevMirrorBackup(p) if p.wait => (
            "bdev_mirror_get",
            &p.name,
            &["image", "backup"],
            &["image", "last_backup_job"],
        ),
        Method::BdevParityMemberCreate(p) if p.wait => ("bdev_parity_get", &p.name, JOB, LAST_JOB),
        Method::BdevParityMemberRepair(p) if p.wait => ("bdev_parity_get", &p.name, JOB, LAST_JOB),
        Method::BdevParityVerify(p) if p.wait => {
            ("bdev_parity_get", &p.name, JOB, &["last_verify"])
        }
        Method::BdevJournalGroupDrain(p) if p.wait => (
            "bdev_journal_group_get",
            &p.name,
            &["drain"],
            &["last_drain"],
        ),
        Method::BdevJournalVolumeRebuild(p) if p.wait => (
            "bdev_journal_volume_get",
            &p.name,
            &["rebuild"],
            &["last_rebuild"],
        ),
        Method::BackupRestore(p) if p.wait => (REPO_JOB, "", JOB, JOB),
        Method::BackupVerify(p) if p.wait => (REPO_JOB, "", JOB, JOB),
        _ => return None,
    };
    Some(Follow {
        get,
        name: name.to_string(),
        job,
        last,
    })
}

fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| &v[*k])
}

/// Polls `backup_job_get` and draws a repository job's progress until it ends.
fn follow_repo_job(client: &mut RpcClient, id: &Value) -> Result<(), String> {
    use std::io::Write;
    loop {
        let req = client.build_request(REPO_JOB, Some(json!({ "id": id })));
        let resp = client.call_raw(&req).map_err(|e| e.to_string())?;
        let j = resp["result"][0].clone();
        if j.is_null() {
            return Err(format!("backup job {id} is gone"));
        }
        match j["state"].as_str() {
            Some("running") => {
                eprint!("\r{}", progress_line(&j));
                let _ = std::io::stderr().flush();
            }
            st => {
                eprintln!("\r{}", progress_line(&j));
                println!("{}", pretty(&j["result"]));
                return match st {
                    Some("done" | "ok") => Ok(()),
                    s => Err(format!(
                        "{} {}",
                        j["kind"].as_str().unwrap_or("job"),
                        s.unwrap_or("ended")
                    )),
                };
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// One line of progress: `[#####.....]  45.2 % resync  812.3 MB/s  ETA 3.1 s`.
fn progress_line(job: &Value) -> String {
    let pct = job["percent"].as_f64().unwrap_or(0.0);
    let filled = ((pct / 100.0) * 30.0).round().clamp(0.0, 30.0) as usize;
    format!(
        "[{}{}] {:5.1} % {} {:8.1} MB/s  ETA {:.1} s",
        "#".repeat(filled),
        ".".repeat(30 - filled),
        pct,
        job["kind"].as_str().unwrap_or("job"),
        job["mb_per_sec"].as_f64().unwrap_or(0.0),
        job["eta_seconds"].as_f64().unwrap_or(0.0)
    )
}

/// Polls the volume's get method and draws the job's progress on stderr until it ends;
/// fails if the job did not complete.
fn follow_job(client: &mut RpcClient, f: &Follow) -> Result<(), String> {
    use std::io::Write;
    let name = &f.name;
    // A job a create starts may take a moment to show.
    std::thread::sleep(Duration::from_millis(100));
    loop {
        let req = client.build_request(f.get, Some(json!({ "name": name })));
        let resp = client.call_raw(&req).map_err(|e| e.to_string())?;
        let m = resp["result"][0].clone();
        if m.is_null() {
            return Err(format!("{name} is gone"));
        }
        match Some(at(&m, f.job)).filter(|j| !j.is_null()) {
            Some(job) => {
                eprint!("\r{}", progress_line(job));
                let _ = std::io::stderr().flush();
            }
            None => {
                let last = at(&m, f.last);
                if !last.is_null() {
                    eprintln!("\r{}", progress_line(last));
                }
                return match last["result"].as_str() {
                    Some("done") | None => Ok(()),
                    Some(r) => Err(format!("{} {r}", last["kind"].as_str().unwrap_or("job"))),
                };
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let follow = job_to_follow(&cli.method);
    let (method, params) = cli.method.request().map_err(|e| e.to_string())?;
    if cli.dry_run {
        println!("{}", pretty(&make_request(1, &method, params)));
        return Ok(());
    }
    let describe = |e: RpcClientError| match e {
        RpcClientError::Timeout => format!(
            "timed out after {}s waiting for the response to {method} from {}",
            cli.timeout.as_secs_f64(),
            cli.server.display()
        ),
        RpcClientError::Connect { .. } => format!("{e} (is strata-tgt running?)"),
        e => format!("{method} on {}: {e}", cli.server.display()),
    };
    let mut client = RpcClient::connect(&cli.server, cli.timeout).map_err(describe)?;
    let request = client.build_request(&method, params);
    let response = client.call_raw(&request).map_err(describe)?;
    if let Some(error) = response.get("error") {
        // Validate it the same way the library does, so malformed errors are reported as such.
        error_fields(error).map_err(describe)?;
        eprintln!(
            "request:\n{}\nGot JSON-RPC error response\nresponse:\n{}",
            pretty(&request_for_report(&request)),
            pretty(error)
        );
        return Err(String::new());
    }
    let result = response_result(response, request.get("id")).map_err(describe)?;
    println!("{}", pretty(&result));
    match follow {
        Some(f) if f.get == REPO_JOB => follow_repo_job(&mut client, &result["job"]),
        Some(f) => follow_job(&mut client, &f),
        None => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("strata-rpc: {message}");
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::collections::BTreeSet;

    fn req(args: &[&str]) -> Result<(String, Option<Value>), String> {
        let cli = Cli::try_parse_from(std::iter::once("strata-rpc").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.method.request().map_err(|e| e.to_string())
    }

    fn ok(args: &[&str]) -> (String, Option<Value>) {
        req(args).unwrap()
    }

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options() {
        let cli = Cli::try_parse_from(["strata-rpc", "spdk_get_version"]).unwrap();
        assert_eq!(cli.server, PathBuf::from("/var/tmp/strata.sock"));
        assert_eq!(cli.timeout, Duration::from_secs(60));
        let cli = Cli::try_parse_from([
            "strata-rpc",
            "-s",
            "/tmp/x.sock",
            "-t",
            "0.5",
            "save_config",
        ])
        .unwrap();
        assert_eq!(cli.server, PathBuf::from("/tmp/x.sock"));
        assert_eq!(cli.timeout, Duration::from_millis(500));
        assert!(Cli::try_parse_from(["strata-rpc", "-t", "0", "save_config"]).is_err());
        assert!(Cli::try_parse_from(["strata-rpc", "-t", "-1", "save_config"]).is_err());
        assert!(Cli::try_parse_from(["strata-rpc", "-t", "nan", "save_config"]).is_err());
        assert!(Cli::try_parse_from(["strata-rpc", "-t", "abc", "save_config"]).is_err());
    }

    #[test]
    fn malloc() {
        assert_eq!(
            ok(&["bdev_malloc_create", "-b", "Malloc1", "64", "512"]),
            (
                "bdev_malloc_create".into(),
                Some(json!({"name": "Malloc1", "num_blocks": 131072, "block_size": 512}))
            )
        );
        assert_eq!(
            ok(&["bdev_malloc_create", "8", "4096", "-u", "abc"]).1,
            Some(json!({"num_blocks": 2048, "block_size": 4096, "uuid": "abc"}))
        );
        let err = req(&["bdev_malloc_create", "1", "520"]).unwrap_err();
        assert!(
            err.contains("not a multiple of the block size 520"),
            "{err}"
        );
        assert_eq!(
            ok(&["bdev_malloc_delete", "Malloc1"]).1,
            Some(json!({"name": "Malloc1"}))
        );
    }

    #[test]
    fn null_uring_aio() {
        assert_eq!(
            ok(&["bdev_null_create", "Null0", "16", "4096", "-u", "x"]).1,
            Some(json!({"name": "Null0", "num_blocks": 4096, "block_size": 4096, "uuid": "x"}))
        );
        assert_eq!(
            ok(&["bdev_uring_create", "/dev/nvme0n1", "U0"]).1,
            Some(json!({"filename": "/dev/nvme0n1", "name": "U0"}))
        );
        assert_eq!(
            ok(&["bdev_aio_create", "/tmp/f", "A0", "4096"]),
            (
                "bdev_aio_create".into(),
                Some(json!({"filename": "/tmp/f", "name": "A0", "block_size": 4096}))
            )
        );
    }

    #[test]
    fn raid() {
        assert_eq!(
            ok(&[
                "bdev_raid_create",
                "-n",
                "r5",
                "-r",
                "raid5f",
                "-z",
                "64",
                "-b",
                "M0 M1 M2",
                "-s"
            ])
            .1,
            Some(
                json!({"name": "r5", "raid_level": "raid5f", "strip_size_kb": 64, "base_bdevs": ["M0", "M1", "M2"], "superblock": true})
            )
        );
        assert_eq!(
            ok(&["bdev_raid_get_bdevs"]).1,
            Some(json!({"category": "all"}))
        );
        assert_eq!(
            ok(&["bdev_raid_add_base_bdev", "r5", "M3"]).1,
            Some(json!({"raid_bdev": "r5", "base_bdev": "M3"}))
        );
        assert_eq!(
            ok(&["bdev_raid_set_options", "-b", "100"]).1,
            Some(json!({"process_max_bandwidth_mb_sec": 100}))
        );
    }

    #[test]
    fn error_and_delay() {
        assert_eq!(
            ok(&["bdev_error_create", "Malloc0"]).1,
            Some(json!({"base_name": "Malloc0"}))
        );
        assert_eq!(
            ok(&["bdev_error_inject_error", "EE_Malloc0", "read", "failure"]).1,
            Some(json!({"name": "EE_Malloc0", "io_type": "read", "error_type": "failure"}))
        );
        assert_eq!(
            ok(&[
                "bdev_error_inject_error",
                "EE_Malloc0",
                "write",
                "corrupt_data",
                "-n",
                "5",
                "-q",
                "8",
                "-o",
                "100",
                "-u",
                "255"
            ])
            .1,
            Some(json!({
                "name": "EE_Malloc0", "io_type": "write", "error_type": "corrupt_data",
                "num": 5, "queue_depth": 8, "corrupt_offset": 100, "corrupt_value": 255
            }))
        );
        assert_eq!(
            ok(&[
                "bdev_delay_create",
                "-b",
                "Malloc0",
                "-d",
                "D0",
                "-r",
                "10",
                "-t",
                "20",
                "-w",
                "30",
                "-n",
                "40"
            ])
            .1,
            Some(json!({
                "base_bdev_name": "Malloc0", "name": "D0", "avg_read_latency": 10,
                "p99_read_latency": 20, "avg_write_latency": 30, "p99_write_latency": 40
            }))
        );
        assert_eq!(
            ok(&[
                "bdev_delay_create",
                "--base-bdev-name=M",
                "--name=D",
                "--avg-read-latency=1",
                "--nine-nine-read-latency=2",
                "--avg-write-latency=3",
                "--nine-nine-write-latency=4",
                "--uuid=u"
            ])
            .1,
            Some(json!({
                "base_bdev_name": "M", "name": "D", "avg_read_latency": 1,
                "p99_read_latency": 2, "avg_write_latency": 3, "p99_write_latency": 4, "uuid": "u"
            }))
        );
        assert!(req(&["bdev_delay_create", "-b", "Malloc0", "-d", "D0"]).is_err());
        assert_eq!(
            ok(&["bdev_delay_update_latency", "D0", "p99_read", "100"]).1,
            Some(json!({"delay_bdev_name": "D0", "latency_type": "p99_read", "latency_us": 100}))
        );
    }

    #[test]
    fn queries() {
        assert_eq!(ok(&["bdev_get_bdevs"]), ("bdev_get_bdevs".into(), None));
        assert_eq!(
            ok(&["bdev_get_bdevs", "-b", "Malloc0", "-t", "1000"]).1,
            Some(json!({"name": "Malloc0", "timeout": 1000}))
        );
        assert_eq!(
            ok(&["bdev_get_iostat", "-b", "M"]).1,
            Some(json!({"name": "M"}))
        );
        assert_eq!(ok(&["rpc_get_methods"]).1, None);
        assert_eq!(
            ok(&["rpc_get_methods", "-c"]).1,
            Some(json!({"current": true}))
        );
        assert_eq!(
            ok(&["spdk_kill_instance", "SIGTERM"]).1,
            Some(json!({"sig_name": "SIGTERM"}))
        );
        for m in [
            "spdk_get_version",
            "framework_get_reactors",
            "save_config",
            "framework_wait_init",
            "bdev_wait_for_examine",
        ] {
            assert_eq!(ok(&[m]), (m.to_string(), None));
        }
    }

    #[test]
    fn nvmf_transport() {
        assert_eq!(
            ok(&["nvmf_create_transport", "-t", "TCP"]),
            (
                "nvmf_create_transport".into(),
                Some(json!({"trtype": "TCP"}))
            )
        );
        assert_eq!(
            ok(&[
                "nvmf_create_transport",
                "-t",
                "tcp",
                "-q",
                "64",
                "-m",
                "4",
                "-c",
                "8192",
                "-i",
                "65536",
                "-u",
                "8192",
                "-a",
                "32",
                "-n",
                "1023",
                "-b",
                "16",
                "-o"
            ])
            .1,
            Some(json!({
                "trtype": "tcp", "max_queue_depth": 64, "max_io_qpairs_per_ctrlr": 4,
                "in_capsule_data_size": 8192, "max_io_size": 65536, "io_unit_size": 8192,
                "max_aq_depth": 32, "num_shared_buffers": 1023, "buf_cache_size": 16,
                "c2h_success": false
            }))
        );
        assert_eq!(
            ok(&[
                "nvmf_create_transport",
                "--trtype=TCP",
                "--max-queue-depth=8",
                "--max-io-size=4096"
            ])
            .1,
            Some(json!({"trtype": "TCP", "max_queue_depth": 8, "max_io_size": 4096}))
        );
        assert!(req(&["nvmf_create_transport"]).is_err());
        assert!(req(&["nvmf_create_transport", "-t", "TCP", "-q", "x"]).is_err());
        assert_eq!(
            ok(&["nvmf_get_transports"]),
            ("nvmf_get_transports".into(), None)
        );
        assert_eq!(
            ok(&["nvmf_get_transports", "--trtype", "TCP"]).1,
            Some(json!({"trtype": "TCP"}))
        );
    }

    #[test]
    fn nvmf_subsystems() {
        let nqn = "nqn.2016-06.io.spdk:cnode1";
        assert_eq!(
            ok(&["nvmf_create_subsystem", nqn]),
            ("nvmf_create_subsystem".into(), Some(json!({"nqn": nqn})))
        );
        assert_eq!(
            ok(&[
                "nvmf_create_subsystem",
                nqn,
                "-s",
                "SPDK001",
                "-d",
                "Model X",
                "-a",
                "-m",
                "8"
            ])
            .1,
            Some(json!({
                "nqn": nqn, "serial_number": "SPDK001", "model_number": "Model X",
                "allow_any_host": true, "max_namespaces": 8
            }))
        );
        assert_eq!(
            ok(&["nvmf_delete_subsystem", nqn]),
            ("nvmf_delete_subsystem".into(), Some(json!({"nqn": nqn})))
        );
        assert_eq!(
            ok(&["nvmf_get_subsystems"]),
            ("nvmf_get_subsystems".into(), None)
        );
        assert_eq!(
            ok(&["nvmf_get_subsystems", nqn]).1,
            Some(json!({"nqn": nqn}))
        );
        for m in [
            "nvmf_subsystem_get_controllers",
            "nvmf_subsystem_get_qpairs",
        ] {
            assert_eq!(ok(&[m, nqn]), (m.to_string(), Some(json!({"nqn": nqn}))));
            assert!(req(&[m]).is_err());
        }
        assert_eq!(ok(&["nvmf_get_stats"]), ("nvmf_get_stats".into(), None));
    }

    #[test]
    fn nvmf_ana() {
        let nqn = "nqn.2016-06.io.spdk:cnode1";
        assert_eq!(
            ok(&["nvmf_create_subsystem", nqn, "-r"]).1,
            Some(json!({"nqn": nqn, "ana_reporting": true}))
        );
        assert_eq!(
            ok(&[
                "nvmf_subsystem_listener_set_ana_state",
                nqn,
                "-t",
                "tcp",
                "-a",
                "127.0.0.1",
                "-s",
                "4421",
                "-n",
                "inaccessible",
                "-g",
                "3"
            ]),
            (
                "nvmf_subsystem_listener_set_ana_state".into(),
                Some(json!({"nqn": nqn, "listen_address": {
                    "trtype": "tcp", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "4421"
                }, "ana_state": "inaccessible", "anagrpid": 3}))
            )
        );
        assert!(req(&[
            "nvmf_subsystem_listener_set_ana_state",
            nqn,
            "-t",
            "tcp",
            "-a",
            "127.0.0.1"
        ])
        .is_err());
        assert_eq!(
            ok(&["nvmf_subsystem_get_listeners", nqn]).1,
            Some(json!({"nqn": nqn}))
        );
    }

    #[test]
    fn nvmf_listeners() {
        let nqn = "nqn.2016-06.io.spdk:cnode1";
        for m in [
            "nvmf_subsystem_add_listener",
            "nvmf_subsystem_remove_listener",
        ] {
            assert_eq!(
                ok(&[m, nqn, "-t", "tcp", "-a", "127.0.0.1", "-s", "4420"]),
                (
                    m.to_string(),
                    Some(json!({"nqn": nqn, "listen_address": {
                        "trtype": "tcp", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "4420"
                    }}))
                )
            );
            assert_eq!(
                ok(&[m, nqn, "-t", "TCP", "-a", "::1", "-s", "4421", "-f", "ipv6"]).1,
                Some(json!({"nqn": nqn, "listen_address": {
                    "trtype": "TCP", "adrfam": "IPv6", "traddr": "::1", "trsvcid": "4421"
                }}))
            );
            assert_eq!(
                ok(&[
                    m,
                    nqn,
                    "--trtype=TCP",
                    "--traddr=10.0.0.1",
                    "--trsvcid=4422",
                    "--adrfam=IPv4"
                ])
                .1,
                Some(json!({"nqn": nqn, "listen_address": {
                    "trtype": "TCP", "adrfam": "IPv4", "traddr": "10.0.0.1", "trsvcid": "4422"
                }}))
            );
            assert!(req(&[m, nqn, "-a", "127.0.0.1", "-s", "4420"]).is_err());
            assert!(req(&[m, "-t", "TCP", "-a", "127.0.0.1", "-s", "4420"]).is_err());
        }
    }

    #[test]
    fn nvmf_namespaces_and_hosts() {
        let nqn = "nqn.2016-06.io.spdk:cnode1";
        assert_eq!(
            ok(&["nvmf_subsystem_add_ns", nqn, "Malloc0"]),
            (
                "nvmf_subsystem_add_ns".into(),
                Some(json!({"nqn": nqn, "namespace": {"bdev_name": "Malloc0"}}))
            )
        );
        assert_eq!(
            ok(&[
                "nvmf_subsystem_add_ns",
                nqn,
                "Malloc1",
                "-n",
                "7",
                "-u",
                "6a1c9e2b-7d3f-4b8a-9c0d-1e2f3a4b5c6d",
                "-g",
                "00112233445566778899AABBCCDDEEFF",
                "-e",
                "0011223344556677"
            ])
            .1,
            Some(json!({"nqn": nqn, "namespace": {
                "bdev_name": "Malloc1", "nsid": 7,
                "uuid": "6a1c9e2b-7d3f-4b8a-9c0d-1e2f3a4b5c6d",
                "nguid": "00112233445566778899AABBCCDDEEFF", "eui64": "0011223344556677"
            }}))
        );
        assert!(req(&["nvmf_subsystem_add_ns", nqn]).is_err());
        assert_eq!(
            ok(&["nvmf_subsystem_remove_ns", nqn, "3"]),
            (
                "nvmf_subsystem_remove_ns".into(),
                Some(json!({"nqn": nqn, "nsid": 3}))
            )
        );
        assert!(req(&["nvmf_subsystem_remove_ns", nqn, "x"]).is_err());
        let host = "nqn.2014-08.org.nvmexpress:uuid:0b7e5d4c-3a29-4f18-9e07-d6c5b4a39281";
        for m in ["nvmf_subsystem_add_host", "nvmf_subsystem_remove_host"] {
            assert_eq!(
                ok(&[m, nqn, host]),
                (m.to_string(), Some(json!({"nqn": nqn, "host": host})))
            );
            assert!(req(&[m, nqn]).is_err());
        }
        assert_eq!(
            ok(&["nvmf_subsystem_allow_any_host", nqn, "-e"]),
            (
                "nvmf_subsystem_allow_any_host".into(),
                Some(json!({"nqn": nqn, "allow_any_host": true}))
            )
        );
        assert_eq!(
            ok(&["nvmf_subsystem_allow_any_host", nqn, "--disable"]).1,
            Some(json!({"nqn": nqn, "allow_any_host": false}))
        );
        assert!(req(&["nvmf_subsystem_allow_any_host", nqn]).is_err());
        assert!(req(&["nvmf_subsystem_allow_any_host", nqn, "-e", "-d"]).is_err());
    }

    #[test]
    fn raw_call() {
        assert_eq!(
            ok(&["call", "bdev_get_bdevs", r#"{"name":"M"}"#]),
            ("bdev_get_bdevs".into(), Some(json!({"name": "M"})))
        );
        assert_eq!(ok(&["call", "x", "[1,2]"]).1, Some(json!([1, 2])));
        assert_eq!(ok(&["call", "x"]), ("x".into(), None));
        assert!(req(&["call", "x", "42"])
            .unwrap_err()
            .contains("object or array"));
        assert!(req(&["call", "x", "{"])
            .unwrap_err()
            .contains("not valid JSON"));
    }

    #[test]
    fn error_report_request() {
        let r = make_request(1, "bdev_get_bdevs", Some(json!({"name": "X"})));
        assert_eq!(
            request_for_report(&r),
            json!({"name": "X", "method": "bdev_get_bdevs", "req_id": 1})
        );
        let r = make_request(2, "save_config", None);
        assert_eq!(
            request_for_report(&r),
            json!({"method": "save_config", "req_id": 2})
        );
    }

    /// Every method in docs/rpc.md's table has a subcommand of the same name, and vice versa.
    #[test]
    fn subcommands_match_docs() {
        let doc = include_str!("../../../docs/rpc.md");
        let mut documented = BTreeSet::new();
        for line in doc.lines().filter(|l| l.starts_with("| `")) {
            let first_cell = line.split('|').nth(1).unwrap_or_default();
            for (i, part) in first_cell.split('`').enumerate() {
                if i % 2 == 1 {
                    documented.insert(part.to_string());
                }
            }
        }
        assert!(documented.contains("bdev_malloc_create"));
        let subcommands: BTreeSet<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .filter(|n| n != "call" && n != "help")
            .collect();
        assert_eq!(subcommands, documented);
    }
}
