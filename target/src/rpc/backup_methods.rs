//! Backup repository methods (`backup_*`): list, verify and restore backups, whatever took
//! them (a mirror's split image today).

use super::bdev_methods::on_reactor;
use super::params::backup::{
    BackupJobGet, BackupList, BackupRepositoryCreate, BackupRestore, BackupVerify,
};
use super::MethodTable;
use serde_json::{json, Value};
use strata_bdev::backup;

pub fn register(t: &mut MethodTable) {
    t.add(
        "backup_repository_create",
        |_, p: BackupRepositoryCreate| {
            on_reactor(move || async move { backup::create_repository(&p.repository).await })?;
            Ok(Value::Bool(true))
        },
    );
    t.add("backup_list", |_, p: BackupList| {
        on_reactor(move || async move { backup::list(&p.repository).await })
    });
    t.add("backup_verify", |_, p: BackupVerify| {
        let id =
            on_reactor(
                move || async move { backup::verify(&p.repository, p.backup.as_deref()).await },
            )?;
        Ok(json!({ "job": id }))
    });
    t.add("backup_restore", |_, p: BackupRestore| {
        let id =
            on_reactor(
                move || async move { backup::restore(&p.repository, &p.backup, &p.bdev).await },
            )?;
        Ok(json!({ "job": id }))
    });
    t.add("backup_job_get", |_, p: BackupJobGet| {
        Ok(Value::Array(backup::jobs(p.id)?))
    });
}
