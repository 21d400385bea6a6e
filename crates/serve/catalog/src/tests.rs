use std::path::Path;

use super::*;

/// `../shared/fruits-360` beside the checkout (or `$FRUITS_DATA`).
fn shared_root() -> std::path::PathBuf {
    std::env::var_os("FRUITS_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into()))
                .join("../../../../shared/fruits-360")
        })
}

/// The class folders of the shared Fruits-360 sample.
fn shared_classes() -> Vec<String> {
    let dir = shared_root().join("Training");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn every_class_of_the_data_set_has_complete_facts() {
    let catalog = Catalog::embedded();
    let classes = shared_classes();
    assert_eq!(classes.len(), 131);
    for class in &classes {
        let f = catalog.get(class).unwrap_or_else(|| panic!("no facts for '{class}'"));
        for (field, value) in [
            ("name_en", &f.name_en),
            ("name_fr", &f.name_fr),
            ("latin", &f.latin),
            ("family", &f.family),
            ("description_en", &f.description_en),
            ("description_fr", &f.description_fr),
            ("season_en", &f.season_en),
            ("season_fr", &f.season_fr),
        ] {
            assert!(value.trim().len() >= 3, "{class}: {field} is empty");
        }
        assert!(f.latin.contains(' '), "{class}: '{}' is not a binomial", f.latin);
        assert!(f.family.ends_with("aceae"), "{class}: family '{}'", f.family);
        assert!(f.description_en.ends_with('.'), "{class}: description is one sentence");
        assert!(
            f.description_fr.ends_with('.'),
            "{class}: description_fr is one sentence"
        );
        assert_ne!(
            f.description_en, f.description_fr,
            "{class}: description_fr is translated"
        );
        let n = &f.per_100g;
        assert!(n.kcal > 0.0 && n.kcal <= 900.0, "{class}: {} kcal", n.kcal);
        assert!((0.0..=100.0).contains(&n.carbohydrates_g), "{class}: carbohydrates");
        assert!((0.0..=50.0).contains(&n.fibre_g), "{class}: fibre");
        assert!((0.0..=500.0).contains(&n.vitamin_c_mg), "{class}: vitamin C");
        // Carbohydrates alone cannot bring more energy than the total (4 kcal/g).
        assert!(
            n.carbohydrates_g * 4.0 <= n.kcal * 1.25 + 5.0,
            "{class}: carbohydrates vs energy"
        );
    }
    assert_eq!(catalog.len(), classes.len(), "no facts for classes that do not exist");
    assert!(
        catalog.unused_kinds.is_empty(),
        "unused kinds: {:?}",
        catalog.unused_kinds
    );
}

#[test]
fn names_follow_the_language_asked_for() {
    let lemon = Catalog::embedded().get("Lemon 1").unwrap();
    assert_eq!(lemon.name("fr"), "Citron");
    assert_eq!(lemon.name("fr-FR"), "Citron");
    assert_eq!(lemon.name("en"), "Lemon");
    assert_eq!(lemon.name("de"), "Lemon");
    assert_eq!(lemon.latin, "Citrus × limon");
    let apple = Catalog::embedded().get("Apple Braeburn 1").unwrap();
    assert_eq!((apple.kind_en.as_str(), apple.kind_fr.as_str()), ("Apple", "Pomme"));
    assert_eq!(lemon.description("fr"), lemon.description_fr);
    assert_eq!(lemon.season("en"), lemon.season_en);
    assert_ne!(lemon.season("fr"), lemon.season("en"));
}

#[test]
fn a_class_naming_an_unknown_kind_is_refused() {
    let bad = "[kinds]\n[classes.\"X 1\"]\nkind = \"nope\"\nen = \"X\"\nfr = \"X\"\n";
    assert!(matches!(Catalog::parse(bad), Err(Error::UnknownKind { .. })));
    assert!(matches!(Catalog::parse("not toml ["), Err(Error::Parse(_))));
}

#[test]
fn a_class_description_without_its_french_is_refused() {
    let kind = "[kinds.x]\nen = \"X\"\nfr = \"X\"\nlatin = \"X y\"\nfamily = \"Xaceae\"\ndescription = \"D.\"\ndescription_fr = \"Df.\"\nseason = \"S\"\nseason_fr = \"Sf\"\nkcal = 1\ncarbohydrates_g = 0\nfibre_g = 0\nvitamin_c_mg = 0\n";
    let class = "[classes.\"X 1\"]\nkind = \"x\"\nen = \"X\"\nfr = \"X\"\ndescription = \"Own.\"\n";
    assert!(matches!(
        Catalog::parse(&format!("{kind}{class}")),
        Err(Error::Untranslated(_))
    ));
    let translated = format!("{kind}{class}description_fr = \"Propre.\"\n");
    assert_eq!(
        Catalog::parse(&translated)
            .unwrap()
            .get("X 1")
            .unwrap()
            .description("fr"),
        "Propre."
    );
}

#[test]
fn languages_come_from_the_query_or_accept_language() {
    assert_eq!(Lang::parse("FR"), Some(Lang::Fr));
    assert_eq!(Lang::parse("de"), None);
    assert_eq!(Lang::from_accept_language("de-DE,fr-CA;q=0.8,en;q=0.5"), Some(Lang::Fr));
    assert_eq!(Lang::from_accept_language("de"), None);
}

#[test]
fn every_class_knows_its_kind_id_and_the_real_photo_kinds_exist() {
    let catalog = Catalog::embedded();
    assert_eq!(catalog.get("Apple Braeburn 1").unwrap().kind, "apple");
    assert_eq!(
        catalog.get("Pepper Red 1").map(|f| f.kind.as_str()),
        Some("bell_pepper_ripe")
    );
    // The kind folders of the shared real photos are catalogue kinds.
    let photos = shared_root().join("../real-photos/grocery-store/train");
    let folders: Vec<String> = std::fs::read_dir(&photos)
        .unwrap_or_else(|e| panic!("{}: {e}", photos.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(folders.len() >= 25, "{} kind folders", folders.len());
    for name in folders {
        assert!(catalog.is_kind(&name), "{name} is not a catalogue kind");
    }
    assert!(!catalog.is_kind("Apple Braeburn 1"), "a class is not a kind");
}

#[test]
fn every_kind_has_its_facts_and_names_in_both_languages() {
    let catalog = Catalog::embedded();
    let apple = catalog.kind("apple").expect("apple is a kind");
    assert_eq!((apple.name("en"), apple.name("fr")), ("Apple", "Pomme"));
    assert_eq!(apple.latin, "Malus domestica");
    assert!(catalog.kind("Apple Braeburn 1").is_none(), "a class is not a kind");
    for kind in catalog.kinds() {
        assert!(
            !kind.name_fr.is_empty() && !kind.description_fr.is_empty(),
            "{}",
            kind.id
        );
        assert!(catalog.all().any(|f| f.kind == kind.id), "{} has no class", kind.id);
    }
    assert_eq!(
        catalog.kinds().count(),
        catalog
            .all()
            .map(|f| &f.kind)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    );
}
