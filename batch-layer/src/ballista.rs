//! Apache DataFusion Ballista: the same view plans on a cluster when one machine is not enough.
//!
//! `batch-layer scheduler` and `batch-layer executor` are Ballista's own scheduler and executor,
//! started as libraries in our binary so that they know Tributary's functions (the aggregates
//! of [`crate::udaf`], the encodings of [`crate::encode`]; plans name them and every process
//! resolves the names) and its store (registered as [`crate::compute::STORE_URL`], built from the same
//! `[store]` config, so executors read the master dataset wherever it lives: `s3://` in a real
//! cluster). With `[batch] engine = "ballista://host:port"` a run's driver sends each date's
//! query to the scheduler and writes the view files and manifests itself, exactly as with the
//! local engine.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use ballista::prelude::{SessionConfigExt, SessionContextExt};
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::{FunctionRegistry, SessionStateBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use tributary_shared::Config;
use tributary_shared::config::{ballista_address, host_port};

use crate::budget::{Budget, tune_session};
use crate::compute::{ComputeError, Engine, ScanStore, register_store};
use crate::udaf;

/// How often an executor reports to the scheduler, and how long the scheduler waits for one
/// before it declares the executor lost and reschedules its tasks (Ballista's defaults, 60 s
/// and 180 s, leave a run waiting minutes for a dead machine).
const HEARTBEAT_SECONDS: u64 = 5;
const EXECUTOR_TIMEOUT_SECONDS: u64 = 20;

/// Registers Tributary's functions on a session state.
fn register_functions(state: &mut datafusion::execution::SessionState) -> anyhow::Result<()> {
    for udaf in udaf::aggregates() {
        state.register_udaf(udaf)?;
    }
    for udf in crate::encode::functions() {
        state.register_udf(udf)?;
    }
    Ok(())
}

/// `batch-layer scheduler`: Ballista's scheduler on `ballista.scheduler_bind`, until the process
/// is stopped. It plans the queries (listing the master files), so its sessions know our
/// functions and store.
pub async fn scheduler(config: Config) -> anyhow::Result<()> {
    let store = ScanStore::open(&config.store)?.root;
    let (host, port) = host_port(&config.ballista.scheduler_bind)
        .context("ballista.scheduler_bind: not host:port")?;
    let address: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("ballista.scheduler_bind {host}:{port}"))?
        .next()
        .with_context(|| format!("ballista.scheduler_bind {host}:{port}: no address"))?;
    let session_builder: ballista_scheduler::SessionBuilder = Arc::new(move |session| {
        let mut state = ballista_core::utils::default_session_builder(session)?;
        register_functions(&mut state)
            .map_err(|e| datafusion::error::DataFusionError::Plan(e.to_string()))?;
        register_store(state.runtime_env(), store.clone());
        Ok(state)
    });
    let scheduler_config = SchedulerConfig {
        bind_host: host.clone(),
        bind_port: port,
        external_host: host,
        override_session_builder: Some(session_builder),
        executor_timeout_seconds: EXECUTOR_TIMEOUT_SECONDS,
        expire_dead_executor_interval_seconds: HEARTBEAT_SECONDS,
        // With every executor gone a job fails after this, rather than waiting for one.
        no_executors_grace_period_seconds: EXECUTOR_TIMEOUT_SECONDS,
        ..Default::default()
    };
    let cluster = BallistaCluster::new_from_config(&scheduler_config)
        .await
        .map_err(|e| anyhow::anyhow!("starting the Ballista scheduler: {e}"))?;
    tracing::info!(%address, "Ballista scheduler listening");
    start_server(cluster, address, Arc::new(scheduler_config))
        .await
        .map_err(|e| anyhow::anyhow!("Ballista scheduler on {address}: {e}"))
}

/// `batch-layer executor`: a Ballista executor serving Flight on `bind` (default
/// `ballista.executor_bind`) and gRPC on the next port, registered with
/// `ballista.scheduler_url`, with `ballista.executor_slots` task slots, `batch.memory_limit`
/// for its queries and `ballista.work_dir` for shuffle and spill files.
pub async fn executor(config: Config, bind: Option<String>) -> anyhow::Result<()> {
    let store = ScanStore::open(&config.store)?.root;
    let bind = bind.unwrap_or_else(|| config.ballista.executor_bind.clone());
    let (host, port) =
        host_port(&bind).context("--bind / ballista.executor_bind: not host:port")?;
    let grpc_port = port
        .checked_add(1)
        .context("ballista.executor_bind: the gRPC port (the next one) is past 65535")?;
    let (scheduler_host, scheduler_port) = host_port(&config.ballista.scheduler_url)
        .context("ballista.scheduler_url: not host:port")?;
    let work_dir = config.ballista.work_dir.clone();
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("ballista.work_dir {work_dir}: cannot create it"))?;

    let mut state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(SessionConfig::new_with_ballista())
        .build();
    register_functions(&mut state)?;
    let registry = Arc::new(BallistaFunctionRegistry::from(&state));

    // Ballista gives each task a fair spill pool of its own, `memory_pool_size` split over
    // the slots (replacing the producer's pool): handed `batch.memory_limit`, the executor's
    // tasks together stay within it. The producer supplies the spill directory and the store.
    let budget = Budget {
        memory_limit: Budget::from_config(&config.batch).memory_limit,
        spill_dir: Some(work_dir.clone()),
    };
    let memory_pool_size = budget.memory_limit;
    let runtime: ballista_core::RuntimeProducer = Arc::new(move |_session| {
        let runtime = budget.runtime()?;
        register_store(&runtime, store.clone());
        Ok(runtime)
    });
    let executor_config = ExecutorProcessConfig {
        bind_host: host.clone(),
        external_host: Some(host),
        port,
        grpc_port,
        scheduler_host,
        scheduler_port,
        vcores: config.ballista.executor_slots,
        memory_pool_size: Some(memory_pool_size),
        work_dir: Some(work_dir),
        executor_heartbeat_interval_seconds: HEARTBEAT_SECONDS,
        override_function_registry: Some(registry),
        override_runtime_producer: Some(runtime),
        ..Default::default()
    };
    tracing::info!(flight_port = port, grpc_port, "Ballista executor starting");
    start_executor_process(Arc::new(executor_config))
        .await
        .map_err(|e| anyhow::anyhow!("Ballista executor on {bind}: {e}"))
}

/// An [`Engine`] whose queries run on the Ballista scheduler of `batch.engine`.
pub async fn engine(config: &Config, master_schema: SchemaRef) -> Result<Engine, ComputeError> {
    let (host, port) = ballista_address(&config.batch.engine).ok_or_else(|| {
        ComputeError::Setup(format!(
            "batch.engine {:?}: expected ballista://host:port",
            config.batch.engine
        ))
    })?;
    // Partitions of the shuffles: the same as the local engine's, so both plan alike.
    let partitions = std::thread::available_parallelism().map_or(2, |n| n.get());
    // A task on an executor holds a slot's share of its budget (see `executor`).
    let budget = Budget::from_config(&config.batch);
    let per_task = budget.memory_limit / config.ballista.executor_slots.max(1) as u64;
    let session = tune_session(SessionConfig::new_with_ballista(), partitions, per_task)
        .with_ballista_job_name("tributary batch");
    // The driver lists nothing itself, but plans are built here before they travel: the store
    // must resolve in this session too.
    let scan = ScanStore::open(&config.store)?;
    let runtime = Arc::new(RuntimeEnv::default());
    register_store(&runtime, scan.root.clone());
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(session)
        .with_runtime_env(runtime)
        .build();
    let url = format!("df://{host}:{port}");
    let ctx = SessionContext::remote_with_state(&url, state)
        .await
        .map_err(|e| {
            ComputeError::Setup(format!(
                "batch.engine ballista://{host}:{port}: cannot reach the scheduler: {e}"
            ))
        })?;
    // After `remote_with_state`: it replaces the function lists of the state it is given.
    udaf::register(&ctx);
    Ok(Engine::with_session(
        ctx,
        scan,
        master_schema,
        budget,
        format!("ballista://{host}:{port}"),
        config.ballista.job_timeout,
    ))
}

/// Asks the scheduler of `engine` (`ballista://host:port`) to cancel a job the driver gave up
/// on. Best effort: the run fails that view either way, and the error says so.
pub async fn cancel_job(engine: &str, job: &str) {
    use ballista_core::serde::protobuf::CancelJobParams;
    use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
    let Some((host, port)) = ballista_address(engine) else {
        return;
    };
    let url = format!("http://{host}:{port}");
    let cancelled = async {
        let mut client = SchedulerGrpcClient::connect(url).await?;
        client
            .cancel_job(CancelJobParams {
                job_id: job.to_string(),
            })
            .await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), cancelled).await {
        Ok(Ok(())) => tracing::warn!(job, "Ballista job cancelled"),
        Ok(Err(e)) => tracing::warn!(job, error = %e, "could not cancel the Ballista job"),
        Err(_) => tracing::warn!(job, "could not cancel the Ballista job: no answer in 10 s"),
    }
}

/// The Ballista job of a plan that ran on the cluster (its root is Ballista's query node).
pub fn job_id(plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> Option<String> {
    use ballista_core::execution_plans::DistributedQueryExec;
    use datafusion_proto::protobuf::LogicalPlanNode;
    plan.downcast_ref::<DistributedQueryExec<LogicalPlanNode>>()
        .and_then(|exec| exec.job_id())
        .map(|id| id.to_string())
}
