//! What stays the same from one try of a request to the next (docs/ARCHITECTURE.md §1.1):
//! where it goes, the request, and the endpoints it went to. [`Sending::one`] makes one try
//! and waits for it; [`Sending::copy`] starts one that runs beside others (a hedge, §18) on its
//! own copy of the request, so that it borrows nothing of the request's.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::time::Instant;

use super::local_answer::LocalAnswer;
use super::one_try::{endpoint_end, per_endpoint_authority, unpicked, Ended, Path, Try, TryLimit};
use super::plan::Plan;
use super::resend::{Outgoing, Resend};
use crate::outcome::Reason;
use crate::pipeline::attempt::Refusal;
use crate::registry::{Destination, Permit, Picked, Upstream};

/// A try running beside others: its ending and the endpoints it went to.
pub(super) type Copy<'a> = Pin<Box<dyn Future<Output = (Ended, u64)> + Send + 'a>>;

/// Asks the destination to let one try through: breaker and local limiter, then a fleet-wide
/// limit. Its Redis call is a large future: boxed, so that it does not enlarge the requests of
/// destinations without one.
pub(super) async fn admit(
    destination: &Destination,
    route: Option<usize>,
) -> Result<Permit<'_>, Refusal> {
    match destination.begin(route) {
        Ok(permit) if destination.fleet.is_some() => Box::pin(permit.fleet_admit()).await,
        admitted => admitted,
    }
}

/// The request and where its tries go (bit `index % 64` of `tried`: a retry or a hedge goes
/// to another endpoint).
pub(super) struct Sending<'a> {
    pub(super) upstream: &'a Upstream,
    pub(super) path: Path,
    pub(super) destination: &'a Arc<Destination>,
    pub(super) grpc: bool,
    pub(super) request: Resend,
    pub(super) tried: u64,
    /// The timeouts and retry rule of the request's route (or policy).
    pub(super) plan: Plan<'a>,
}

impl<'a> Sending<'a> {
    /// One try under `permit` and `limit` (`last`: no other may follow), to an endpoint picked
    /// for it, recorded there. A try that finds no endpoint is the final answer (`Err`).
    pub(super) async fn one(
        &mut self,
        permit: Permit<'a>,
        limit: TryLimit,
        last: bool,
    ) -> Result<Ended, LocalAnswer> {
        let (try_, permit) = self.pick(permit, limit).await?;
        // Once the request was sent for good it is not replayable, so the planner never asks
        // for another try; should it ever, the last answer stands.
        let Some((next, has_body)) = self.request.next(last) else {
            try_.picked.neutral();
            let detail = "no request left to send".to_owned();
            return Err(LocalAnswer::local(Reason::Internal, detail));
        };
        let try_ = Try { has_body, ..try_ };
        let (upstream, destination, grpc) = (try_.upstream, try_.destination, try_.grpc);
        let (ended, picked, tried) = try_.run(permit, next, limit).await;
        endpoint_ended(upstream, destination, grpc, &ended, picked);
        self.tried |= tried;
        Ok(ended)
    }

    /// A try on a copy of the request, started beside the others (`first`: the race's first,
    /// which may carry a body of unknown length, recorded): awaited by the caller, it borrows
    /// nothing of `self`.
    pub(super) async fn copy(
        &mut self,
        permit: Permit<'a>,
        limit: TryLimit,
        first: bool,
    ) -> Result<Copy<'a>, LocalAnswer> {
        let (try_, permit) = self.pick(permit, limit).await?;
        let request = if first {
            self.request.first_copy()
        } else {
            self.request.copy()
        };
        let Some((request, has_body)) = request else {
            try_.picked.neutral();
            let detail = "no request left to copy".to_owned();
            return Err(LocalAnswer::local(Reason::Internal, detail));
        };
        let try_ = Try { has_body, ..try_ };
        let (upstream, destination, grpc) = (try_.upstream, try_.destination, try_.grpc);
        Ok(Box::pin(async move {
            let request = Outgoing::Owned(request);
            let (ended, picked, tried) = try_.run(permit, request, limit).await;
            endpoint_ended(upstream, destination, grpc, &ended, picked);
            (ended, tried)
        }))
    }

    /// The endpoint for a try, and the try to it (its request still to come); a try that finds
    /// none is recorded through its permit, and is the final answer.
    async fn pick(
        &mut self,
        permit: Permit<'a>,
        limit: TryLimit,
    ) -> Result<(Try<'a>, Permit<'a>), LocalAnswer> {
        let destination = self.destination;
        let started = permit.started();
        let picked = match destination
            .pick(self.tried, started, limit.duration())
            .await
        {
            Ok(picked) => picked,
            Err(error) => {
                let error = unpicked(error, &destination.authority);
                permit.failed(&error);
                return Err(LocalAnswer::failed(error));
            }
        };
        self.tried |= picked.tried_bit();
        if let Some(authority) = per_endpoint_authority(self.upstream, &picked) {
            self.request.set_authority(authority);
        }
        let try_ = Try {
            upstream: self.upstream,
            path: self.path,
            destination,
            picked,
            tried: self.tried,
            has_body: false,
            grpc: self.grpc,
            plan: self.plan,
        };
        Ok((try_, permit))
    }
}

/// Records at its endpoint how a try ended.
fn endpoint_ended(
    upstream: &Upstream,
    destination: &Destination,
    grpc: bool,
    ended: &Ended,
    picked: Picked,
) {
    match endpoint_end(upstream, ended, grpc) {
        Some(end) => picked.finish(&destination.endpoints, end, Instant::now()),
        None => picked.neutral(),
    }
}
