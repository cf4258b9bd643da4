//! The bounded queue in front of the model: `max_concurrency` slots, and up to `max_queue`
//! requests waiting for one.
//!
//! Admission ([`Queue::admit`]) is decided at once, before a response starts, so that a full
//! queue is a 429 (and shutting down a 503) even for a streamed request. A waiting request's
//! place is a [`Ticket`]: dropping it (the client went away and actix dropped the handler, or a
//! stream's task was aborted) leaves the queue at once, so a request nobody waits for any more
//! never causes a 429 for others.

use super::error::ApiError;
use actix_web::http::StatusCode;
use prometheus::IntGauge;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

pub struct Queue {
    slots: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    /// `hone_queue_depth`, kept equal to `waiting`.
    depth: IntGauge,
    max_queue: usize,
}

/// A request's right to the model: a slot already, or a place in the queue.
pub enum Ticket {
    Ready(OwnedSemaphorePermit),
    Waiting(Place, Arc<Semaphore>),
}

/// A place in the queue, given up when dropped.
pub struct Place {
    waiting: Arc<AtomicUsize>,
    depth: IntGauge,
}

impl Drop for Place {
    fn drop(&mut self) {
        let depth = self.waiting.fetch_sub(1, Ordering::SeqCst) - 1;
        self.depth.set(depth as i64);
    }
}

fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the server is shutting down",
    )
}

impl Queue {
    pub fn new(max_concurrency: usize, max_queue: usize, depth: IntGauge) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_concurrency)),
            waiting: Arc::new(AtomicUsize::new(0)),
            depth,
            max_queue,
        }
    }

    /// Refuses new work: waiting requests and new ones get 503.
    pub fn close(&self) {
        self.slots.close();
    }

    /// A free slot, else a place in the queue; 429 when the queue is full, 503 once closed.
    pub fn admit(&self) -> Result<Ticket, ApiError> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => return Ok(Ticket::Ready(permit)),
            Err(TryAcquireError::Closed) => return Err(unavailable()),
            Err(TryAcquireError::NoPermits) => {}
        }
        let depth = self.waiting.fetch_add(1, Ordering::SeqCst) + 1;
        self.depth.set(depth as i64);
        let place = Place {
            waiting: self.waiting.clone(),
            depth: self.depth.clone(),
        };
        if depth > self.max_queue {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "the queue is full ({} requests waiting); retry later",
                    self.max_queue
                ),
            ));
        }
        Ok(Ticket::Waiting(place, self.slots.clone()))
    }
}

impl Ticket {
    /// Waits for a model slot; 503 if the server starts shutting down meanwhile.
    pub async fn slot(self) -> Result<OwnedSemaphorePermit, ApiError> {
        match self {
            Self::Ready(permit) => Ok(permit),
            Self::Waiting(_place, slots) => slots.acquire_owned().await.map_err(|_| unavailable()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dropped_place_frees_the_queue() {
        let queue = Queue::new(1, 1, IntGauge::new("depth", "depth").unwrap());
        let running = queue.admit().unwrap();
        assert!(matches!(running, Ticket::Ready(_)));
        let waiting = queue.admit().unwrap();
        assert_eq!(queue.admit().err().map(|e| e.status.as_u16()), Some(429));
        assert_eq!(queue.depth.get(), 1);
        drop(waiting);
        assert_eq!(queue.depth.get(), 0);
        let next = queue.admit().unwrap();
        drop(running);
        assert!(next.slot().await.is_ok());
        queue.close();
        assert_eq!(queue.admit().err().map(|e| e.status.as_u16()), Some(503));
    }
}
