//! Training the localiser (fruits-bundle `localiser`) on composed scenes.
//!
//! Scenes are rendered and run through the backbone here, on the client,
//! not on the engine: a few hundred scenes take seconds, and what is learned
//! (every cell's feature and fruit cover) would be a hundred rows per scene
//! to ship back. The studio shots and the backgrounds are read through
//! object storage like every input.

use fruits_backbone::Backbone;
use fruits_bundle::localiser::{fit, LocaliserOptions};
use fruits_bundle::Localiser;
use fruits_pca::Pca;
use fruits_preprocess::scene::Backgrounds;
use fruits_storage::{Location, ObjectUri};
use futures::{StreamExt, TryStreamExt};

use crate::Error;

/// Trains the localiser on scenes of studio shots taken evenly from
/// `studio` (paths of the training split's images), on the photographs under
/// `backgrounds`, with the installed model of `precision` (the one the
/// bundle's features came from).
pub async fn train_localiser(
    (model_dir, precision): (&std::path::Path, fruits_backbone::Precision),
    pca: &Pca,
    studio: &[String],
    backgrounds: &str,
    opts: LocaliserOptions,
) -> Result<Localiser, Error> {
    let files = fruits_storage::read_images(&Location::parse(backgrounds)?).await?;
    let bytes: Vec<_> = files.into_iter().map(|(_, b)| b).collect();
    let backgrounds = Backgrounds::decode(&bytes).map_err(|e| Error::NoBackgrounds(format!("{backgrounds}: {e}")))?;
    // Sixteen reads in flight: on S3 each shot is a request.
    let reads = evenly(studio, opts.scenes).into_iter().map(|path| async move {
        let bytes = ObjectUri::parse(path)?.read().await?;
        Ok::<_, Error>((bytes, path.clone()))
    });
    let read: Vec<_> = futures::stream::iter(reads).buffered(16).try_collect().await?;
    // A shot that does not decode was reported when featurized; skip it.
    let shots: Vec<_> = read
        .into_iter()
        .filter_map(|(bytes, path)| Some((fruits_preprocess::decode(&bytes).ok()?, path)))
        .collect();
    let backbone = Backbone::shared(model_dir, precision)?;
    let pca = pca.clone();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::task::spawn_blocking(move || fit(&backbone, &pca, &shots, &backgrounds, &opts, threads))
        .await
        .map_err(|e| Error::Training(e.to_string()))?
        .map_err(Error::from)
}

/// At most `n` of `items`, spread evenly over them (every class of a
/// class-sorted list gets its share).
fn evenly<T>(items: &[T], n: usize) -> Vec<&T> {
    let take = n.min(items.len());
    (0..take).map(|i| &items[i * items.len() / take]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shots_are_taken_evenly_over_the_list() {
        let items: Vec<u32> = (0..10).collect();
        assert_eq!(evenly(&items, 5), [&0, &2, &4, &6, &8]);
        assert_eq!(evenly(&items, 20).len(), 10, "no more than there are");
        assert!(evenly(&items, 0).is_empty());
    }
}
