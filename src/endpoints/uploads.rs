//! The upload family: the endpoints that take a file as
//! `multipart/form-data` (feishu-platform.md §4). What the gateway knows of
//! them beyond the data file (which gives their limits):
//!
//! - their **body limit**, above the global 1 MiB: the file limit Feishu
//!   states plus [`FORM_OVERHEAD`] for the multipart envelope and the text
//!   fields (a body over it is answered 413);
//! - their **form contract**: the text fields and the file part, checked as
//!   the body streams to Feishu (see `proxy/stream.rs`), never buffered
//!   whole.
//!
//! | endpoint | file limit | form |
//! |---|---|---|
//! | `POST /open-apis/im/v1/images` | 10 MiB | `image_type` ∈ {message, avatar}, `image` |
//! | `POST /open-apis/im/v1/files` | 30 MiB | `file_type` ∈ {opus, mp4, pdf, doc, xls, ppt, stream}, `file_name`, optional `duration` (ms), `file` |
//! | `POST /open-apis/drive/v1/files/upload_all` | 20 MiB | `file_name`, `parent_type`, `parent_node`, `size`, optional `checksum`, `file` |
//! | `POST /open-apis/drive/v1/medias/upload_all` | 20 MiB | `file_name`, `parent_type`, `parent_node`, `size`, optional `checksum` and `extra`, `file` |
//! | `POST /open-apis/drive/v1/files/upload_part` | 4 MiB (one block) | `upload_id`, `seq`, `size`, optional `checksum`, `file` |
//! | `POST /open-apis/drive/v1/medias/upload_part` | 4 MiB (one block) | the same |
//!
//! Feishu says "10 MB", "30 MB", "20 MB" and a block of 4,194,304 bytes;
//! the gateway reads MB as MiB, the larger reading, so it never refuses a
//! file Feishu would take. Values of `parent_type` are left to Feishu (the
//! list differs between files and medias and grows).

use http::Method;

use super::Builtin;
use crate::validate::{FieldValue, FilePart, FormContract, FormField};

/// Room for the multipart envelope (boundaries, part headers) and the text
/// fields, on top of a file limit.
pub const FORM_OVERHEAD: usize = 64 * 1024;

const MIB: usize = 1024 * 1024;

/// `im/v1/images`: 10 MB.
pub const IMAGE_MAX: usize = 10 * MIB;
/// `im/v1/files`: 30 MB.
pub const FILE_MAX: usize = 30 * MIB;
/// Drive `upload_all`: 20 MB.
pub const DRIVE_ALL_MAX: usize = 20 * MIB;
/// Drive `upload_part`: one block of 4,194,304 bytes.
pub const DRIVE_BLOCK: usize = 4 * MIB;

/// Route id of `POST /open-apis/im/v1/images`.
pub const IMAGES: &str = "im.v1.image.create";
/// Route id of `POST /open-apis/im/v1/files`.
pub const FILES: &str = "im.v1.file.create";
/// Route id of `POST /open-apis/drive/v1/files/upload_all`.
pub const DRIVE_FILE_UPLOAD_ALL: &str = "drive.v1.file.upload_all";
/// Route id of `POST /open-apis/drive/v1/medias/upload_all`.
pub const DRIVE_MEDIA_UPLOAD_ALL: &str = "drive.v1.media.upload_all";
/// Route id of `POST /open-apis/drive/v1/files/upload_part`.
pub const DRIVE_FILE_UPLOAD_PART: &str = "drive.v1.file.upload_part";
/// Route id of `POST /open-apis/drive/v1/medias/upload_part`.
pub const DRIVE_MEDIA_UPLOAD_PART: &str = "drive.v1.media.upload_part";

/// The family's entries, for [`super::BUILTIN`].
pub const ENDPOINTS: &[Builtin] = &[
    upload(IMAGES, "/open-apis/im/v1/images", IMAGE_MAX),
    upload(FILES, "/open-apis/im/v1/files", FILE_MAX),
    upload(
        DRIVE_FILE_UPLOAD_ALL,
        "/open-apis/drive/v1/files/upload_all",
        DRIVE_ALL_MAX,
    ),
    upload(
        DRIVE_MEDIA_UPLOAD_ALL,
        "/open-apis/drive/v1/medias/upload_all",
        DRIVE_ALL_MAX,
    ),
    upload(
        DRIVE_FILE_UPLOAD_PART,
        "/open-apis/drive/v1/files/upload_part",
        DRIVE_BLOCK,
    ),
    upload(
        DRIVE_MEDIA_UPLOAD_PART,
        "/open-apis/drive/v1/medias/upload_part",
        DRIVE_BLOCK,
    ),
];

/// An upload endpoint: no JSON contract, a body limit of `file_max` plus the
/// form's overhead.
const fn upload(id: &'static str, template: &'static str, file_max: usize) -> Builtin {
    Builtin {
        id,
        method: Method::POST,
        template,
        contract: None,
        max_body_bytes: Some(file_max + FORM_OVERHEAD),
    }
}

/// The form contract of the upload route `route_id`, if it is one.
pub fn form(route_id: &str) -> Option<FormContract> {
    let file = |name, max_bytes: usize| FilePart {
        name,
        max_bytes: max_bytes as u64,
    };
    let drive_all = |extra: bool| {
        let mut fields = vec![
            FormField::required("file_name", FieldValue::NonEmpty),
            FormField::required("parent_type", FieldValue::NonEmpty),
            FormField::required("parent_node", FieldValue::NonEmpty),
            FormField::required("size", FieldValue::Count),
            FormField::optional("checksum", FieldValue::NonEmpty),
        ];
        if extra {
            fields.push(FormField::optional("extra", FieldValue::NonEmpty));
        }
        FormContract {
            fields,
            file: file("file", DRIVE_ALL_MAX),
        }
    };
    let drive_part = || FormContract {
        fields: vec![
            FormField::required("upload_id", FieldValue::NonEmpty),
            FormField::required("seq", FieldValue::Count),
            FormField::required("size", FieldValue::Count),
            FormField::optional("checksum", FieldValue::NonEmpty),
        ],
        file: file("file", DRIVE_BLOCK),
    };
    Some(match route_id {
        IMAGES => FormContract {
            fields: vec![FormField::required(
                "image_type",
                FieldValue::OneOf(&["message", "avatar"]),
            )],
            file: file("image", IMAGE_MAX),
        },
        FILES => FormContract {
            fields: vec![
                FormField::required(
                    "file_type",
                    FieldValue::OneOf(&["opus", "mp4", "pdf", "doc", "xls", "ppt", "stream"]),
                ),
                FormField::required("file_name", FieldValue::NonEmpty),
                FormField::optional("duration", FieldValue::Count),
            ],
            file: file("file", FILE_MAX),
        },
        DRIVE_FILE_UPLOAD_ALL => drive_all(false),
        DRIVE_MEDIA_UPLOAD_ALL => drive_all(true),
        DRIVE_FILE_UPLOAD_PART | DRIVE_MEDIA_UPLOAD_PART => drive_part(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::{data, Catalog};

    #[test]
    fn every_upload_template_is_the_data_files_own() {
        let rows = data::rows();
        for b in ENDPOINTS {
            assert!(
                rows.iter()
                    .any(|r| r.method == b.method && r.template == b.template),
                "{} {} is not a row of data/feishu-api-limits.tsv",
                b.method,
                b.template
            );
            assert!(form(b.id).is_some(), "{} has a form", b.id);
        }
    }

    #[test]
    fn upload_routes_carry_their_body_limits_and_json_routes_keep_the_default() {
        let c = Catalog::builtin();
        let limit = |path: &str| {
            let i = c.find(&Method::POST, path).unwrap();
            c.route(i).max_body_bytes
        };
        assert_eq!(
            limit("/open-apis/im/v1/images"),
            Some(10 * MIB + FORM_OVERHEAD)
        );
        assert_eq!(
            limit("/open-apis/im/v1/files"),
            Some(30 * MIB + FORM_OVERHEAD)
        );
        assert_eq!(
            limit("/open-apis/drive/v1/medias/upload_all"),
            Some(20 * MIB + FORM_OVERHEAD)
        );
        assert_eq!(
            limit("/open-apis/drive/v1/files/upload_part"),
            Some(4_194_304 + FORM_OVERHEAD)
        );
        assert_eq!(
            limit("/open-apis/im/v1/messages"),
            None,
            "the global default"
        );
        let i = c.find(&Method::POST, "/open-apis/im/v1/images").unwrap();
        assert_eq!(c.route(i).id, IMAGES);
        assert!(c.route(i).limits.len() == 2, "the data file's limits stay");
    }
}
