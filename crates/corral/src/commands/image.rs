//! `corral image …`: create (an operation), list, show, delete.

use anyhow::Result;

use corral_api::{format_size, CreateImageRequest, Image, Operation};

use super::operation::follow;
use crate::cli::{ImageCommand, ImageCreateArgs, ImageNameArgs};
use crate::client::{encode, Client, API};
use crate::output::{details, emit, format_time, or_dash, print_out, render, table};

pub async fn run(client: &Client, command: &ImageCommand) -> Result<()> {
    match command {
        ImageCommand::Create(args) => create(client, args).await,
        ImageCommand::List(args) => {
            let images: Vec<Image> = client.get(&format!("{API}/images")).await?;
            emit(args.output.output, &images, list_table)
        }
        ImageCommand::Show(args) => {
            let image: Image = client.get(&image_path(&args.name)).await?;
            emit(args.output.output, &image, page)
        }
        ImageCommand::Delete(args) => delete(client, args).await,
    }
}

fn image_path(name: &str) -> String {
    format!("{API}/images/{}", encode(name))
}

async fn create(client: &Client, args: &ImageCreateArgs) -> Result<()> {
    let request = CreateImageRequest {
        name: args.name.clone(),
        from_volume: args.from_volume.clone(),
        pool: args.pool.clone(),
    };
    let op: Operation = client.post(&format!("{API}/images"), &request).await?;
    let op = follow(
        client,
        op,
        &format!(
            "copying volume {} into image {}",
            args.from_volume, args.name
        ),
    )
    .await?;
    emit(args.output.output, &op, |_| {
        format!(
            "created image {} from volume {}\n",
            args.name, args.from_volume
        )
    })
}

async fn delete(client: &Client, args: &ImageNameArgs) -> Result<()> {
    let _: serde_json::Value = client.delete(&image_path(&args.name)).await?;
    print_out(format!("deleted image {}\n", args.name).as_bytes())
}

fn list_table(images: &Vec<Image>) -> String {
    let mut t = table(&["NAME", "POOL", "SIZE", "SOURCE", "CREATED", "USED BY"]);
    for i in images {
        t.add_row(vec![
            i.name.clone(),
            i.pool.clone(),
            format_size(i.size_bytes),
            or_dash(i.source.clone()),
            format_time(i.created_at),
            if i.used_by.is_empty() {
                "-".to_string()
            } else {
                i.used_by.join(", ")
            },
        ]);
    }
    render(t)
}

fn page(i: &Image) -> String {
    details(&[
        ("Name", i.name.clone()),
        ("Pool", i.pool.clone()),
        ("Path", i.path.clone()),
        ("Format", i.format.as_str().to_string()),
        ("Size", format_size(i.size_bytes)),
        ("Source", or_dash(i.source.clone())),
        ("Created", format_time(i.created_at)),
        (
            "Linked clones",
            if i.used_by.is_empty() {
                "-".to_string()
            } else {
                i.used_by.join(", ")
            },
        ),
    ])
}
