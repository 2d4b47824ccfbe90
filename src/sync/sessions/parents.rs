//! The parent stations' read model: recorded as announced, listed for HTTP.

use super::Sessions;
use crate::clock::now_millis;
use crate::store::{parent_stations, StoreError};

impl Sessions {
    /// Records a parent station's announcement (an empty one removes it).
    pub(crate) async fn parent_station(
        &self,
        account_id: &str,
        client_id: &str,
        announcement: Option<&serde_json::Value>,
    ) -> Result<(), StoreError> {
        match announcement {
            None => {
                self.store
                    .remove_parent_station(account_id, client_id)
                    .await
            }
            Some(value) => {
                self.store
                    .record_parent_station(account_id, client_id, value, now_millis())
                    .await
            }
        }
    }

    /// The account's parent stations.
    pub async fn parent_stations(
        &self,
        account_id: &str,
    ) -> Result<Vec<parent_stations::Model>, StoreError> {
        self.store.parent_stations(account_id).await
    }
}
